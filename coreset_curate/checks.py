"""Argument checks and id alignment, in one place.

Every public entry point validates its arguments at the door with these, so that a wrong
value gets an error naming the argument, what it was and what is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["UnknownIds", "is_int", "positive_int", "non_negative_int", "non_negative_number",
           "fraction", "boolean", "choice", "align"]


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
