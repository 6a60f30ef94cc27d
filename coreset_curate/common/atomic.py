"""Atomic outputs: every file the toolkit writes goes to a temporary name beside its target
and is renamed into place, so a failed or killed command leaves the old file or none.

Temporary names carry the writing process's id, ``.NAME.PID.XXXXXXXX.tmp``. A process killed
with SIGKILL cannot remove its own temporary file, so the next write to the same target
removes the temporaries of processes that no longer run (those of a live process, a
concurrent writer, are left alone). On a folder shared by several machines a process id
says nothing about the other machine: there a stale temporary stays until removed by hand.
"""

from __future__ import annotations

import glob
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of ``path`` whose writing process no longer runs."""
    path = Path(path)
    prefix = f".{path.name}."
    stale = []
    for p in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        parts = p.name[len(prefix):].split(".")
        if len(parts) == 3 and parts[0].isdigit() and len(parts[1]) == 8 \
                and not _alive(int(parts[0])):
            stale.append(p)
    return stale


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, the
    file written there is flushed to disk and renamed to ``path`` (replacing it), with the
    permissions ``open()`` would have given it. On an error it is removed."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    for p in stale_temporaries(path):
        p.unlink(missing_ok=True)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                    dir=parent)
    except OSError as err:
        raise PermissionError(f"cannot write {path.name} in the folder {parent}: "
                              f"{err.strerror or err}") from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
