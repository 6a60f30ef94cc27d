"""Coreset selection: score tables in, the subset of an epoch out.

``select(scores, "acs", fraction=0.1, epoch=t, epochs=E)`` returns the sample ids (and
loss weights) to train on at epoch ``t``; ``index_table`` turns selections into the
index contract (``tables.INDEX_SCHEMA``). Methods and schedules are registered by name in
plain dicts; a new method is one decorated function of a ``SelectionContext``.

Conventions, the same for every method:

* per class (default), keep ``floor(S * n_c + 0.5)`` samples of class c (``round`` with
  halves up), at least ``min_per_class`` of them where the class has that many;
  ``per_class=False`` keeps ``floor(S * n + 0.5)`` overall;
* "highest score first"; ties go to the smaller ``sample_id``, so results never depend on
  row order;
* a score-based method reads the latest scoring round at or before ``epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .data import check_fingerprint
from .tables import INDEX_SCHEMA, TableError, make_metadata, table_metadata, validate_scores, \
    with_metadata

__all__ = [
    "SCHEDULES",
    "METHODS",
    "register_method",
    "register_schedule",
    "beta",
    "select",
    "Selection",
    "SelectionContext",
    "top_fraction",
    "class_budget",
    "index_table",
]

SCHEDULES: dict[str, Callable[[float, float], float]] = {}
METHODS: dict[str, Callable[[SelectionContext], Selection]] = {}


def register_schedule(name: str) -> Callable:
    def add(fn):
        if name in SCHEDULES:
            raise ValueError(f"schedule {name!r} is already registered")
        SCHEDULES[name] = fn
        return fn

    return add


def register_method(name: str) -> Callable:
    def add(fn):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = fn
        return fn

    return add


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
    """Weight of EVS (DS gets ``1 - beta``) at ``epoch`` of a run of ``epochs`` epochs."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; registered: {sorted(SCHEDULES)}")
    _check_epochs(epoch, epochs)
    return float(SCHEDULES[schedule](epoch, epochs))


def _check_epochs(epoch: int, epochs: int | None) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer; got {epoch!r}")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
        if epoch >= epochs:
            raise ValueError(f"epoch {epoch} is past the run's end (epochs={epochs}: "
                             f"valid epochs are 0..{epochs - 1})")


@dataclass
class Selection:
    """Sample ids (ascending) and their loss weights."""

    sample_ids: np.ndarray
    weights: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        ids = np.asarray(self.sample_ids, dtype=np.int64)
        w = (np.ones(len(ids), dtype=np.float32) if self.weights is None
             else np.asarray(self.weights, dtype=np.float32))
        order = np.argsort(ids, kind="stable")
        self.sample_ids, self.weights = ids[order], w[order]

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass
class SelectionContext:
    """What a method sees: the scoring round in use (columns as numpy arrays sorted by
    sample_id), every round, and the request."""

    columns: dict[str, np.ndarray]
    rounds: list[dict[str, np.ndarray]]
    fraction: float
    epoch: int
    epochs: int | None
    schedule: str
    seed: int
    per_class: bool
    min_per_class: int

    @property
    def ids(self) -> np.ndarray:
        return self.columns["sample_id"]

    @property
    def labels(self) -> np.ndarray:
        return self.columns["label"]

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise ValueError(f"this method needs score column {name!r}; the table has "
                             f"{sorted(self.columns)}")
        values = self.columns[name]
        if np.isnan(values.astype(np.float64)).any():
            hint = " (score with a reference model)" if name.startswith(("ds", "ref_")) else ""
            raise ValueError(f"score column {name!r} has missing values{hint}")
        return values

    def rng(self, per_epoch: bool) -> np.random.Generator:
        key = [self.seed, self.epoch] if per_epoch else [self.seed]
        return np.random.default_rng(np.random.SeedSequence(key))

    def top(self, score: np.ndarray) -> Selection:
        keep = top_fraction(score, self.labels, self.ids, self.fraction,
                            per_class=self.per_class, min_per_class=self.min_per_class)
        return Selection(self.ids[keep])


def class_budget(counts: np.ndarray, fraction: float, min_per_class: int = 0) -> np.ndarray:
    """Samples kept per class: floor(fraction * n_c + 0.5), at least ``min_per_class``
    (where the class has that many), never more than the class has."""
    counts = np.asarray(counts, dtype=np.int64)
    k = np.floor(fraction * counts + 0.5).astype(np.int64)
    k = np.maximum(k, np.minimum(min_per_class, counts))
    return np.minimum(k, counts)


def top_fraction(score: np.ndarray, labels: np.ndarray, ids: np.ndarray, fraction: float, *,
                 per_class: bool = True, min_per_class: int = 0) -> np.ndarray:
    """Boolean mask of the highest-scoring samples (per class or overall); ties go to the
    smaller id. Vectorised: one sort, no loop over samples or classes."""
    score = np.asarray(score, dtype=np.float64)
    n = len(score)
    if per_class:
        labels = np.asarray(labels, dtype=np.int64)
        order = np.lexsort((ids, -score, labels))
        sorted_labels = labels[order]
        classes, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
        budget = class_budget(counts, fraction, min_per_class)
        group = np.repeat(np.arange(len(classes)), counts)
        rank = np.arange(n) - starts[group]
        keep_sorted = rank < budget[group]
    else:
        order = np.lexsort((ids, -score))
        k = int(np.floor(fraction * n + 0.5))
        k = max(k, min(min_per_class, n))
        keep_sorted = np.arange(n) < k
    keep = np.zeros(n, dtype=bool)
    keep[order[keep_sorted]] = True
    return keep


# ------------------------------------------------------------------ methods
@register_method("acs")
def _acs(ctx: SelectionContext) -> Selection:
    """Adaptive coreset selection: beta(t) * EVS + (1 - beta(t)) * DS, highest first."""
    b = beta(ctx.schedule, ctx.epoch, ctx.epochs if ctx.epochs is not None else _need_epochs())
    score = b * ctx.column("evs").astype(np.float64)
    if b < 1.0:
        score = score + (1.0 - b) * ctx.column("ds").astype(np.float64)
    return ctx.top(score)


def _need_epochs():
    raise ValueError("acs needs epochs= (the run's length) to compute its schedule")


@register_method("evs")
@register_method("el2n")
def _el2n(ctx: SelectionContext) -> Selection:
    """Highest error vector score (EL2N of the student's current weights)."""
    return ctx.top(ctx.column("evs"))


@register_method("random")
def _random(ctx: SelectionContext) -> Selection:
    """Class-balanced random subset drawn once from the seed: the same every epoch."""
    return ctx.top(ctx.rng(per_epoch=False).random(len(ctx.ids)))


@register_method("random_epoch")
def _random_epoch(ctx: SelectionContext) -> Selection:
    """Class-balanced random subset redrawn for each selection epoch."""
    return ctx.top(ctx.rng(per_epoch=True).random(len(ctx.ids)))


# ------------------------------------------------------------------ entry points
def _as_rounds(scores) -> tuple[list[dict[str, np.ndarray]], list[int], dict]:
    tables = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    if not tables:
        raise ValueError("select needs at least one score table")
    merged, fp = [], None
    for i, t in enumerate(tables):
        if not isinstance(t, pa.Table):
            try:
                t = pa.Table.from_pandas(t, preserve_index=False)
            except Exception as err:  # noqa: BLE001 - any non-table input
                raise TypeError(f"score table {i} must be a pyarrow.Table or pandas.DataFrame; "
                                f"got {type(t).__name__}") from err
        t = validate_scores(t, f"score table {i}")
        t_fp = table_metadata(t).get("fingerprint")
        if t_fp is not None:
            if fp is None:
                fp = t_fp
            else:
                check_fingerprint(fp, t_fp, f"score table {i}")
        merged.append(t.select([c for c in t.column_names]))
    table = pa.concat_tables(merged, promote_options="default")
    table = validate_scores(table, "the score tables together")
    epochs = table.column("epoch").to_numpy()
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    rounds, round_epochs = [], sorted(set(epochs.tolist()))
    for e in round_epochs:
        rows = np.flatnonzero(epochs == e)
        rows = rows[np.argsort(cols["sample_id"][rows], kind="stable")]
        rounds.append({k: _numeric(v[rows]) for k, v in cols.items()})
    return rounds, round_epochs, {"fingerprint": fp}


def _numeric(v: np.ndarray) -> np.ndarray:
    if v.dtype == object:  # nullable column with nulls: None -> NaN
        return np.array([np.nan if x is None else x for x in v], dtype=np.float64)
    return v


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
) -> Selection:
    """The subset for ``epoch`` chosen by ``method`` from one or more score tables.

    ``scores``: a score table (pyarrow or pandas), or a list of them (scoring rounds).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered methods: {sorted(METHODS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; registered: {sorted(SCHEDULES)}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0 < fraction <= 1):
        raise ValueError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, int) or min_per_class < 0:
        raise ValueError(f"min_per_class must be a non-negative integer; got {min_per_class!r}")
    _check_epochs(epoch, epochs)
    rounds, round_epochs, _ = _as_rounds(scores)
    usable = [i for i, e in enumerate(round_epochs) if e <= epoch]
    if not usable:
        raise TableError(f"no scoring round at or before epoch {epoch}; the tables hold rounds "
                         f"at epochs {round_epochs}")
    ctx = SelectionContext(rounds[usable[-1]], rounds[: usable[-1] + 1], float(fraction),
                           int(epoch), epochs, schedule, int(seed), bool(per_class),
                           int(min_per_class))
    return METHODS[method](ctx)


def index_table(selections: dict[int, Selection], *, metadata: dict | None = None) -> pa.Table:
    """Index rows (epoch, sample_id, weight) for ``{epoch: Selection}``, sorted by epoch
    then sample_id, with the index metadata."""
    epochs, ids, weights = [], [], []
    for e in sorted(selections):
        sel = selections[e]
        epochs.append(np.full(len(sel), e, dtype=np.int32))
        ids.append(sel.sample_ids)
        weights.append(sel.weights)
    table = pa.table({
        "epoch": pa.array(np.concatenate(epochs) if epochs else np.array([], np.int32)),
        "sample_id": pa.array(np.concatenate(ids) if ids else np.array([], np.int64)),
        "weight": pa.array(np.concatenate(weights) if weights else np.array([], np.float32)),
    }, schema=INDEX_SCHEMA)
    return with_metadata(table, make_metadata(**(metadata or {})))


def merge_index(existing: pa.Table, new: pa.Table) -> pa.Table:
    """``existing`` with the epochs in ``new`` replaced by ``new``'s rows; metadata of ``new``
    (its ``sources`` list extended with the existing one's)."""
    new_epochs = set(new.column("epoch").to_numpy().tolist())
    old = existing.filter(pa.array(~np.isin(existing.column("epoch").to_numpy(),
                                            list(new_epochs))))
    table = pa.concat_tables([old.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA),
                              new.select(INDEX_SCHEMA.names)])
    order = np.lexsort((table.column("sample_id").to_numpy(), table.column("epoch").to_numpy()))
    meta_old, meta_new = table_metadata(existing), table_metadata(new)
    sources = list(dict.fromkeys(meta_old.get("sources", []) + meta_new.get("sources", [])))
    return with_metadata(table.take(pa.array(order)), {**meta_new, "sources": sources})


def index_epochs(index: pa.Table) -> Sequence[int]:
    return sorted(set(index.column("epoch").to_numpy().tolist()))
