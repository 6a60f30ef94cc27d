"""``select``: the entry point of the selection library. It reads score tables in memory,
or by row groups (``streamed``) when a table's columns exceed the memory budget, drops the
excluded samples and calls the registered method (``core``)."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..common.checks import non_negative_int
from ..common.tables import TableError
from .core import METHODS, Selection, SelectionContext, check_request, unknown_exclusions
from .rounds import ScoreRounds, load_rounds
from .schedules import SCHEDULES, check_epochs
from .sampled import SAMPLED, select_sampled
from .streamed import STREAMABLE, default_memory_budget, in_memory_bytes, select_streamed

__all__ = ["select"]

log = logging.getLogger(__name__)


def select(
    scores,
    method: str = "acs",
    fraction: float = 0.1,
    *,
    epoch: int = 0,
    epochs: int | None = None,
    schedule: str = "cos",
    seed: int = 0,
    per_class: bool = True,
    min_per_class: int = 0,
    options: dict | None = None,
    exclude=None,
    memory_budget: int | None = None,
) -> Selection:
    """The subset for ``epoch`` chosen by ``method`` from one or more score tables.

    With ``exclude``, the method chooses among the other rows and the class budgets stay
    those of all rows, so the subset keeps its size where the class has rows enough.

    Args:
        scores: a score table (path, pyarrow or pandas), a list of them (scoring rounds),
            or a ``ScoreRounds`` from ``load_rounds``.
        method: a registered method (``list_methods``).
        fraction: share of the samples to keep, in (0, 1].
        epoch: the epoch to select for; the latest round at or before it is used.
        epochs: the run's epoch count (ACS's schedule needs it).
        schedule: the ACS schedule (``list_schedules``).
        seed: seed of the random methods (draws differ by ``(seed, epoch)``).
        per_class: keep the fraction of every class (True) or of all samples.
        min_per_class: the smallest per-class budget.
        options: method-specific settings (for example ``{"hard_cut": 0.2}`` for
            ``ccs``); unknown keys are refused.
        exclude: sample ids the subset must not hold (an array, an ``AuditResult``, an
            audit table or folder: its flagged mislabeled samples).
        memory_budget: bytes the selection may hold (default: a quarter of the machine's
            memory). One Parquet table whose columns would take more is read by row
            groups (``streamed.select_streamed``, or ``sampled.select_sampled`` for soft
            selection: the same ids, memory about one batch plus the kept rows) where
            the method allows it (``streamed.STREAMABLE``, ``sampled.SAMPLED``).

    Returns:
        The ``Selection`` of the epoch.

    Raises:
        ValueError: unknown method, schedule or option, an argument out of range, a score
            column the method needs is missing or incomplete, or ``exclude`` leaves
            nothing.
        TableError: a table breaks the contract, or no scoring round is at or before
            ``epoch``.
        UnknownIds: ``exclude`` names ids the score tables lack.
    """
    opts = check_request(method, fraction, seed, min_per_class, options)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; registered: {sorted(SCHEDULES)}")
    check_epochs(epoch, epochs)
    spec = METHODS[method]
    if memory_budget is not None:
        non_negative_int("memory_budget", memory_budget)
    if isinstance(scores, (str, os.PathLike)) and method in STREAMABLE | SAMPLED:
        budget = default_memory_budget() if memory_budget is None else memory_budget
        if os.path.isfile(scores) and in_memory_bytes(scores, spec.columns) > budget:
            log.info("%s: the table's columns exceed the memory budget (%d bytes); reading "
                     "it by row groups", os.fspath(scores), budget)
            run = select_sampled if method in SAMPLED else select_streamed
            return run(
                scores, method, fraction, epoch=int(epoch), epochs=epochs, schedule=schedule,
                seed=int(seed), per_class=bool(per_class), min_per_class=int(min_per_class),
                options=opts, exclude=exclude)
    data = scores if isinstance(scores, ScoreRounds) else load_rounds(
        scores, spec.columns, allow_missing=spec.partial)
    usable = [i for i, e in enumerate(data.epochs) if e <= epoch]
    if not usable:
        if spec.columns:
            raise TableError(f"no scoring round at or before epoch {epoch}; the tables hold "
                             f"rounds at epochs {data.epochs}")
        usable = [0]  # ids and labels only: any round will do
    current = usable[-1]
    rounds, full_counts = data.rounds[: current + 1], None
    if exclude is not None:
        rounds, full_counts = _without(rounds, exclude)
    ctx = SelectionContext(rounds[-1], rounds, float(fraction), int(epoch), epochs, schedule,
                           int(seed), bool(per_class), int(min_per_class), opts, full_counts)
    return spec.fn(ctx)


def _without(rounds: list[dict], exclude) -> tuple[list[dict], np.ndarray]:
    """The rounds without the excluded ids' rows, and the latest round's rows per class
    before (the budgets). Ids the latest round lacks are refused."""
    from ..labels.cleaning import exclusions

    ids = exclusions(exclude)
    last = rounds[-1]
    known = np.isin(ids, last["sample_id"])
    if not known.all():
        raise unknown_exclusions(ids[~known])
    labels = last["label"].astype(np.int64)
    full_counts = np.bincount(labels - min(0, int(labels.min())))  # as ctx.labels groups
    kept = []
    for r in rounds:
        keep = ~np.isin(r["sample_id"], ids)
        kept.append({k: v[keep] for k, v in r.items()})
    if not len(kept[-1]["sample_id"]):
        raise ValueError("the exclusion list leaves no sample to select from")
    return kept, full_counts


