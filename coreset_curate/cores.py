"""Whether the machine's cores are oversubscribed: more busy threads than cores.

Two training processes with torch's default threads on a 2-core machine each run several
times slower than one alone (an epoch of CIFAR-10 ResNet-20 went from about 100 s to
550-640 s here), because their threads wait on each other at every parallel operator.
The trainer calls ``check_cores`` at its start and after each epoch and warns once.
"""

from __future__ import annotations

import logging
import os
import time

__all__ = ["usable_cores", "busy_elsewhere", "oversubscription", "check_cores"]

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def busy_elsewhere(samples: int = 5, interval_s: float = 0.02,
                   path: str = "/proc/loadavg") -> int | None:
    """Threads running or runnable on the machine besides this process's, the median of a
    few readings of the kernel's count (``/proc/loadavg``); None where there is none."""
    counts = []
    for i in range(samples):
        try:
            with open(path) as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        # this process's own running threads (the one reading, pool threads still
        # spinning after a parallel operator) are not "elsewhere"
        counts.append(running - max(1, _own_running()))
        if i + 1 < samples:
            time.sleep(interval_s)
    counts.sort()
    return max(0, counts[len(counts) // 2])


def _own_running() -> int:
    """Threads of this process in the running state (Linux ``/proc/self/task``)."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        n += state == "R"
    return n


def oversubscription(others: int | None, threads: int, cores: int) -> str | None:
    """The warning for ``threads`` of this run beside ``others`` busy threads on ``cores``
    cores, or None when they fit."""
    if others is None or others + threads <= cores:
        return None
    return (f"the cores are oversubscribed: about {others} other busy thread(s) on this "
            f"machine's {cores} core(s) besides this run's {threads}; each process will run "
            f"several times slower than alone. Run one job at a time, or give each fewer "
            f"threads (recipe key num_threads, e.g. --set num_threads="
            f"{max(1, cores - others) if others < cores else 1}); wall times measured now "
            "are not comparable with a quiet machine's")


def check_cores(threads: int | None = None) -> str | None:
    """Log a warning (and return it) when the cores are oversubscribed now."""
    import torch

    message = oversubscription(busy_elsewhere(), threads or torch.get_num_threads(),
                               usable_cores())
    if message:
        log.warning(message)
    return message
