"""ACS schedules: the weight ``beta`` of EVS (DS gets ``1 - beta``) over a run, registered
by name (``register_schedule``); ``cos`` is the paper's."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..common.checks import non_negative_int, positive_int
from ..common.registry import Registry

__all__ = ["SCHEDULES", "register_schedule", "list_schedules", "beta", "check_epochs"]


SCHEDULES: Registry = Registry("schedule")


def register_schedule(name: str) -> Callable:
    """Decorator that registers an ACS schedule: ``fn(t, total) -> beta`` in [0, 1].

    Args:
        name: the schedule's name (``select(..., schedule=name)``).

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: (when the decorator is applied) ``name`` is already registered.
    """
    return SCHEDULES.register(name)


def list_schedules() -> list[str]:
    """Names of the registered ACS schedules (the weight of EVS over the run).

    Returns:
        The names, sorted.
    """
    return SCHEDULES.names()


@register_schedule("cos")
def _cos(t: float, total: float) -> float:
    """The paper's beta(t) = cos(pi t / 2E): EVS leads early, DS late."""
    return math.cos(math.pi * t / (2 * total))


@register_schedule("cos2")
def _cos2(t: float, total: float) -> float:
    """beta(t) = cos^2(pi t / 2E), as the method's reference code computes it."""
    return math.cos(math.pi * t / (2 * total)) ** 2


@register_schedule("linear")
def _linear(t: float, total: float) -> float:
    return 1.0 - t / total


@register_schedule("evs")
def _evs_only(t: float, total: float) -> float:
    return 1.0


@register_schedule("ds")
def _ds_only(t: float, total: float) -> float:
    return 0.0


def beta(schedule: str, epoch: int, epochs: int) -> float:
    """Weight of EVS (DS gets ``1 - beta``) at ``epoch`` of a run of ``epochs`` epochs.

    Args:
        schedule: a registered schedule (``list_schedules``), ``"cos"`` for the paper's.
        epoch: the epoch, 0-based.
        epochs: the run's epoch count.

    Returns:
        beta in [0, 1].

    Raises:
        ValueError: unknown schedule, or ``epoch`` outside ``0..epochs - 1``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; registered: {sorted(SCHEDULES)}")
    check_epochs(epoch, epochs)
    return float(SCHEDULES[schedule](epoch, epochs))


def check_epochs(epoch: int, epochs: int | None) -> None:
    non_negative_int("epoch", epoch)
    if epochs is not None:
        positive_int("epochs", epochs)
        if epoch >= epochs:
            raise ValueError(f"epoch {epoch} is past the run's end (epochs={epochs}: "
                             f"valid epochs are 0..{epochs - 1})")
