"""Whether the machine's cores are oversubscribed: more busy threads than cores.

Two training processes with torch's default threads on a 2-core machine each run several
times slower than one alone (an epoch of CIFAR-10 ResNet-20 went from about 100 s to
550-640 s here), because their threads wait on each other at every parallel operator.
The trainer calls ``check_cores`` at its start and after each epoch and warns once, and
(in one process) keeps a ``CoreWatch`` reading the count every few seconds while it
computes: a minute-long job started between two epoch ends shares the cores unseen by the
epoch-end readings alone.
"""

from __future__ import annotations

import logging
import os
import threading
import time

__all__ = ["usable_cores", "busy_elsewhere", "oversubscription", "check_cores", "CoreWatch"]

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


def _own_running(proc: str = "/proc") -> int:
    """Threads in the running state of this process and of its child processes (a
    loader's decoding workers are the run's own work; Linux ``/proc/self/task``)."""
    n, seen = 0, set()
    todo = ["self"]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            if pid == "self":
                return 1
            continue
        for tid in tasks:
            try:
                with open(f"{proc}/{pid}/task/{tid}/stat") as fh:
                    state = fh.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            n += state == "R"
            try:
                with open(f"{proc}/{pid}/task/{tid}/children") as fh:
                    kids = fh.read().split()
            except OSError:
                kids = []
            todo += [k for k in kids if k not in seen]
            seen.update(kids)
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


class CoreWatch:
    """Reads, in a daemon thread, whether other processes' threads share the cores while
    this process computes: every ``interval_s`` one reading of ``busy_elsewhere``; the
    cores count as shared (``shared``, ``message``; warned once) after ``sustained``
    readings in a row find more busy threads than the cores leave this run's ``threads``
    (a command that passes in a second does not count; a test run of 15 s does). Use as
    a context manager, or ``start()`` and ``stop()``."""

    def __init__(self, threads: int | None = None, *, interval_s: float = 5.0,
                 sustained: int = 3, path: str = "/proc/loadavg",
                 cores: int | None = None) -> None:
        import torch

        self.threads = threads or torch.get_num_threads()
        self.cores = cores or usable_cores()
        self.interval_s, self.sustained, self.path = float(interval_s), int(sustained), path
        self.message: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def shared(self) -> bool:
        return self.message is not None

    def _watch(self) -> None:
        run = 0
        while not self._stop.wait(self.interval_s):
            message = oversubscription(busy_elsewhere(samples=1, path=self.path),
                                       self.threads, self.cores)
            run = run + 1 if message else 0
            if run >= self.sustained:
                self.message = message
                log.warning("%s (seen for %d readings %.0f s apart)", message, run,
                            self.interval_s)
                return

    def start(self) -> "CoreWatch":
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="core-watch",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "CoreWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
