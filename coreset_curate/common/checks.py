"""Argument checks and id alignment, in one place.

Every public entry point validates its arguments at the door with these, so that a wrong
value gets an error naming the argument, what it was and what is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["InputTypeError", "UnknownIds", "is_int", "positive_int", "non_negative_int",
           "non_negative_number", "fraction", "boolean", "choice", "align", "resolve_device",
           "first_line"]


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong kind (a model that is not an ``nn.Module``, a dataset this
    toolkit cannot read). A TypeError, and a ValueError like every other bad input: the
    command line reports it in one line."""


class UnknownIds(KeyError, ValueError):
    """Sample ids (or positions) asked for are not in the dataset or subset. A KeyError for
    lookups, and a ValueError: the command line reports it as bad input."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def is_int(v) -> bool:
    """An integer (Python or numpy), and not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def positive_int(name: str, v):
    if not is_int(v) or v < 1:
        raise ValueError(f"{name} must be a positive integer; got {v!r}")
    return int(v)


def non_negative_int(name: str, v):
    if not is_int(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {v!r}")
    return int(v)


def non_negative_number(name: str, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or v < 0:
        raise ValueError(f"{name} must be a non-negative number; got {v!r}")
    return v


def fraction(name: str, v, *, closed_low: bool = False):
    """A number in (0, 1] (or [0, 1] with ``closed_low``)."""
    ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
          and (0 <= v if closed_low else 0 < v) and v <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in {'[' if closed_low else '('}0, 1]; "
                         f"got {v!r}")
    return float(v)


def boolean(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false; got {v!r}")
    return v


def choice(name: str, v, accepted: Iterable, what: str = "") -> str:
    accepted = sorted(accepted)
    if v not in accepted:
        raise ValueError(f"unknown {what or name} {v!r}; accepted: {accepted}")
    return v


def align(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``ids`` sits in the ascending array ``sorted_ids``.

    Returns (positions, present): ``positions[i]`` is the row of ``ids[i]`` in
    ``sorted_ids`` where ``present[i]``, and a valid but meaningless row elsewhere.
    """
    sorted_ids, ids = np.asarray(sorted_ids), np.asarray(ids)
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    pos = np.searchsorted(sorted_ids, ids).clip(0, len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids


def resolve_device(device=None, what: str = "device"):
    """The ``torch.device`` to run on, checked to be there.

    Args:
        device: ``None`` or ``"auto"`` (CUDA when torch sees a GPU, else CPU), a device
            string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...) or a ``torch.device``.
        what: how the setting is named in the error (``--device``, ``device``).

    Returns:
        The device.

    Raises:
        ValueError: the string names no device torch knows, or the device is not on
            this machine (no CUDA GPU, a GPU index past the last, no MPS).
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{what} {device!r} is not a device torch knows: use cpu, cuda or "
                         "cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {str(device)!r} is not available: torch finds no CUDA "
                             "GPU on this machine; use cpu, or leave it unset to use a GPU "
                             "only when there is one")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{what} {str(device)!r} is not available: this machine has "
                             f"{count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise ValueError(f"{what} {str(device)!r} is not available on this machine; use cpu")
    return dev


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name where it has none
    (an empty file read as a checkpoint raises one with no message)."""
    return (str(err).splitlines() or [type(err).__name__])[0]
