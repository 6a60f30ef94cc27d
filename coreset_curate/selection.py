"""Coreset selection: score tables in, the subset of an epoch out.

``select(scores, "acs", fraction=0.1, epoch=t, epochs=E)`` returns the sample ids (and
loss weights) to train on at epoch ``t``; ``index_table`` turns selections into the
index contract (``tables.INDEX_SCHEMA``). Methods and schedules are registered by name in
plain dicts; a new method is one decorated function of a ``SelectionContext``::

    @register_method("my_method", columns=("loss",))
    def my_method(ctx):
        return ctx.top(ctx.column("loss"))

Conventions, the same for every method:

* per class (default), keep ``floor(S * n_c + 0.5)`` samples of class c (``round`` with
  halves up), at least ``min_per_class`` of them where the class has that many (a class
  smaller than its budget gives all it has); ``per_class=False`` keeps
  ``floor(S * n + 0.5)`` overall;
* "highest score first"; ties go to the smaller ``sample_id``, so results never depend on
  row order;
* a method that reads scores uses the latest scoring round at or before ``epoch``
  (``forgetting`` reads every round up to it); ``random`` / ``random_epoch`` read only ids
  and labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .data import check_fingerprint
from .tables import (INDEX_SCHEMA, SCORE_SCHEMA, TableError, conform, make_metadata,
                     table_metadata, with_metadata)

__all__ = [
    "SCHEDULES",
    "METHODS",
    "register_method",
    "register_schedule",
    "beta",
    "select",
    "load_rounds",
    "ScoreRounds",
    "Selection",
    "SelectionContext",
    "top_fraction",
    "class_budget",
    "index_table",
    "merge_index",
    "add_to_index",
]

BASE_COLUMNS = ("sample_id", "label", "epoch")


# ------------------------------------------------------------------ registries
SCHEDULES: dict[str, Callable[[float, float], float]] = {}


@dataclass(frozen=True)
class MethodSpec:
    fn: Callable[[SelectionContext], Selection]
    columns: tuple[str, ...]
    options: dict[str, Any]
    exact_size: bool
    all_rounds: bool


METHODS: dict[str, MethodSpec] = {}


def register_schedule(name: str) -> Callable:
    def add(fn):
        if name in SCHEDULES:
            raise ValueError(f"schedule {name!r} is already registered")
        SCHEDULES[name] = fn
        return fn

    return add


def register_method(name: str, *, columns: Sequence[str] = (), options: dict | None = None,
                    exact_size: bool = True, all_rounds: bool = False) -> Callable:
    """Register a selection method.

    columns: score columns it reads (besides sample_id, label, epoch); options: the
    method-specific options it accepts, with defaults; exact_size: whether it returns
    exactly the class budget (False for methods that decide their own size);
    all_rounds: whether it reads every round up to the epoch rather than the latest.
    """
    def add(fn):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = MethodSpec(fn, tuple(columns), dict(options or {}), exact_size,
                                   all_rounds)
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


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_epochs(epoch: int, epochs: int | None) -> None:
    if not _is_int(epoch) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer; got {epoch!r}")
    if epochs is not None:
        if not _is_int(epochs) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
        if epoch >= epochs:
            raise ValueError(f"epoch {epoch} is past the run's end (epochs={epochs}: "
                             f"valid epochs are 0..{epochs - 1})")


# ------------------------------------------------------------------ results and context
@dataclass
class Selection:
    """Sample ids (ascending) and their loss weights."""

    sample_ids: np.ndarray
    weights: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        ids = np.asarray(self.sample_ids, dtype=np.int64)
        w = (np.ones(len(ids), dtype=np.float32) if self.weights is None
             else np.asarray(self.weights, dtype=np.float32))
        if len(w) != len(ids):
            raise ValueError("sample_ids and weights must have the same length")
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            order = np.argsort(ids, kind="stable")
            ids, w = ids[order], w[order]
        self.sample_ids, self.weights = ids, w

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass
class SelectionContext:
    """What a method sees: the scoring round in use (columns as numpy arrays, rows sorted
    by sample_id), the rounds up to the epoch, the request and its options."""

    columns: dict[str, np.ndarray]
    rounds: list[dict[str, np.ndarray]]
    fraction: float
    epoch: int
    epochs: int | None
    schedule: str
    seed: int
    per_class: bool
    min_per_class: int
    options: dict[str, Any] = field(default_factory=dict)

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
        if values.dtype.kind == "f" and np.isnan(values).any():
            hint = " (score with a reference model)" if name in ("ds", "ref_prob_label") else ""
            raise ValueError(f"score column {name!r} has missing values{hint}")
        return values

    def rng(self, per_epoch: bool) -> np.random.Generator:
        key = [self.seed, self.epoch] if per_epoch else [self.seed]
        return np.random.default_rng(np.random.SeedSequence(key))

    def budget(self) -> tuple[np.ndarray, np.ndarray]:
        """(classes, samples to keep per class) for per-class selection."""
        classes, counts = np.unique(self.labels, return_counts=True)
        return classes, class_budget(counts, self.fraction, self.min_per_class)

    def total_budget(self) -> int:
        n = len(self.ids)
        return min(n, max(int(math.floor(self.fraction * n + 0.5)), self.min_per_class))

    def top(self, score: np.ndarray) -> Selection:
        keep = top_fraction(score, self.labels, self.fraction, per_class=self.per_class,
                            min_per_class=self.min_per_class)
        return Selection(self.ids[keep])

    def groups(self):
        """Row positions of each class (per-class selection) or of every row (global),
        with the number to keep from each."""
        if not self.per_class:
            yield np.arange(len(self.ids)), self.total_budget()
            return
        order = np.argsort(self.labels, kind="stable")
        classes, budget = self.budget()
        bounds = np.searchsorted(self.labels[order], classes, side="left")
        ends = np.append(bounds[1:], len(order))
        for start, end, k in zip(bounds, ends, budget):
            yield order[start:end], int(k)


def class_budget(counts: np.ndarray, fraction: float, min_per_class: int = 0) -> np.ndarray:
    """Samples kept per class: floor(fraction * n_c + 0.5), at least ``min_per_class``
    (where the class has that many), never more than the class has."""
    counts = np.asarray(counts, dtype=np.int64)
    k = np.floor(fraction * counts + 0.5).astype(np.int64)
    k = np.maximum(k, np.minimum(min_per_class, counts))
    return np.minimum(k, counts)


def _small_ints(labels: np.ndarray) -> np.ndarray:
    """Labels as the narrowest integer type, so numpy's stable sort is a radix sort."""
    top = int(labels.max()) if len(labels) else 0
    return labels.astype(np.int16 if top < 2**15 else np.int32, copy=False)


def _read_only_view(a: np.ndarray):
    """A zero-copy tensor over ``a``, which may be a read-only Arrow buffer. Only for reads:
    the callers gather from it into new tensors and never write into it."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def top_fraction(score: np.ndarray, labels: np.ndarray, fraction: float, *,
                 per_class: bool = True, min_per_class: int = 0) -> np.ndarray:
    """Boolean mask of the highest-scoring rows, per class or overall.

    Rows must be sorted by sample_id: ties go to the earlier row. One radix sort groups the
    rows by class; in each class a linear-time partition finds the k-th largest score, and
    the rows above it plus the first rows equal to it are kept. The loop runs over classes,
    never over samples.
    """
    import torch  # multi-threaded sort, gather and scatter on zero-copy views

    score = np.ascontiguousarray(score)
    n = len(score)
    if per_class:
        # stable sort of small integers is a radix sort: rows grouped by class, row order kept
        lab_t, order_t = torch.sort(torch.from_numpy(_small_ints(np.asarray(labels))),
                                    stable=True)
        lab_g = lab_t.numpy()
        s_g = _read_only_view(score).index_select(0, order_t).numpy()
        counts = np.diff(np.searchsorted(lab_g, np.arange(int(lab_g[-1]) + 2,
                                                          dtype=lab_g.dtype)))
        del lab_t, lab_g
        budget = class_budget(counts, fraction, min_per_class)
    else:
        order_t, s_g = None, score
        counts = np.array([n])
        budget = np.array([min(n, max(int(math.floor(fraction * n + 0.5)), min_per_class))])
    starts = np.cumsum(counts) - counts
    keep_g = np.zeros(n, dtype=bool)
    for c in np.flatnonzero(budget):
        lo, hi, k = starts[c], starts[c] + counts[c], budget[c]
        seg = s_g[lo:hi]
        kth = np.partition(seg, counts[c] - k)[counts[c] - k]  # the k-th largest score
        above = seg > kth
        keep_g[lo:hi] = above
        ties = np.flatnonzero(seg == kth)[: k - int(above.sum())]  # first rows = smaller ids
        keep_g[lo + ties] = True
    if order_t is None:
        return keep_g
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order_t[torch.from_numpy(keep_g)]] = True
    return keep.numpy()


# ------------------------------------------------------------------ methods
@register_method("acs", columns=("evs", "ds"))
def _acs(ctx: SelectionContext) -> Selection:
    """Adaptive coreset selection: beta(t) * EVS + (1 - beta(t)) * DS, highest first."""
    if ctx.epochs is None:
        raise ValueError("acs needs epochs= (the run's length) to compute its schedule")
    import torch  # multi-threaded elementwise work on zero-copy views

    b = beta(ctx.schedule, ctx.epoch, ctx.epochs)
    # astype copies: the in-place ops below never touch the (read-only) table's buffers
    score = torch.from_numpy(ctx.column("evs").astype(np.float64)).mul_(b)
    if b < 1.0:  # separate multiply and add: the same rounding as the formula written out
        score.add_(torch.from_numpy(ctx.column("ds").astype(np.float64)).mul_(1.0 - b))
    return ctx.top(score.numpy())


@register_method("evs", columns=("evs",))
@register_method("el2n", columns=("evs",))
def _el2n(ctx: SelectionContext) -> Selection:
    """Highest error vector score (EL2N of the student's current weights)."""
    return ctx.top(ctx.column("evs"))


@register_method("loss", columns=("loss",))
def _loss(ctx: SelectionContext) -> Selection:
    """Highest cross-entropy."""
    return ctx.top(ctx.column("loss"))


@register_method("entropy", columns=("entropy",))
def _entropy(ctx: SelectionContext) -> Selection:
    """Highest predictive entropy."""
    return ctx.top(ctx.column("entropy"))


@register_method("margin", columns=("margin",))
def _margin(ctx: SelectionContext) -> Selection:
    """Smallest margin (label logit minus the largest other logit) first."""
    return ctx.top(-ctx.column("margin").astype(np.float64))


@register_method("least_confidence", columns=("max_prob",))
def _least_confidence(ctx: SelectionContext) -> Selection:
    """Lowest top-class probability first (1 - max_prob)."""
    return ctx.top(1.0 - ctx.column("max_prob").astype(np.float64))


@register_method("random")
def _random(ctx: SelectionContext) -> Selection:
    """Class-balanced random subset drawn once from the seed: the same every epoch."""
    return ctx.top(ctx.rng(per_epoch=False).random(len(ctx.ids)))


@register_method("random_epoch")
def _random_epoch(ctx: SelectionContext) -> Selection:
    """Class-balanced random subset redrawn for each selection epoch."""
    return ctx.top(ctx.rng(per_epoch=True).random(len(ctx.ids)))


@register_method("forgetting", columns=("pred",), all_rounds=True)
def _forgetting(ctx: SelectionContext) -> Selection:
    """Most forgetting events (correct in one round, wrong in the next) across the rounds
    up to the epoch; samples never predicted correctly rank above all others."""
    pred = aligned_column(ctx.rounds, ctx.ids, "pred")
    label = aligned_column(ctx.rounds, ctx.ids, "label")
    c = np.where(np.isnan(pred), np.nan, pred == label)  # rounds x samples, NaN: absent
    prev, nxt = c[:-1], c[1:]
    events = np.nansum((prev == 1) & (nxt == 0), axis=0)
    never = ~(c == 1).any(axis=0)
    score = events.astype(np.float64) + never * (len(ctx.rounds) + 1)
    return ctx.top(score)


@register_method("ccs", columns=("evs",), options={"score": "evs", "hard_cut": 0.1, "bins": 50})
def _ccs(ctx: SelectionContext) -> Selection:
    """Coverage-centric selection (Zheng et al. 2023): drop the hardest ``hard_cut`` share,
    then sample evenly across ``bins`` equal-width score bins (the sparsest bins first)."""
    name, cut, bins = ctx.options["score"], float(ctx.options["hard_cut"]), int(ctx.options["bins"])
    if not 0 <= cut < 1:
        raise ValueError(f"ccs option hard_cut must be in [0, 1); got {cut}")
    if bins < 1:
        raise ValueError(f"ccs option bins must be >= 1; got {bins}")
    score = ctx.column(name).astype(np.float64)
    rng = ctx.rng(per_epoch=True)
    chosen = []
    for rows, k in ctx.groups():
        if k == 0:
            continue
        order = rows[np.argsort(-score[rows], kind="stable")]
        n_cut = min(int(math.floor(cut * len(rows))), len(rows) - k)
        pool = order[n_cut:]
        s = score[pool]
        edges = np.linspace(s.min(), s.max(), bins + 1)
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        left, take = k, np.zeros(bins, dtype=np.int64)
        for i, b in enumerate(np.argsort(counts, kind="stable")):
            share = left // (bins - i)
            take[b] = min(counts[b], share)
            left -= take[b]
        # the remainder (from rounding) goes to bins that still have samples, sparsest first
        for b in np.argsort(counts, kind="stable"):
            extra = min(left, counts[b] - take[b])
            take[b] += extra
            left -= extra
        for b in np.flatnonzero(take):
            members = pool[which == b]
            chosen.append(rng.choice(members, size=int(take[b]), replace=False))
    rows = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    return Selection(ctx.ids[rows])


def _embeddings(ctx: SelectionContext):
    import torch

    emb = ctx.column("embedding")
    return torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))


@register_method("moderate", columns=("embedding",))
def _moderate(ctx: SelectionContext) -> Selection:
    """Moderate coreset (Xia et al. 2023): samples whose distance to their class centre is
    closest to the median distance of the class."""
    import torch

    emb = _embeddings(ctx)
    labels = torch.from_numpy(_small_ints(ctx.labels).astype(np.int64))
    k = int(labels.max()) + 1
    sums = torch.zeros(k, emb.shape[1]).index_add_(0, labels, emb)
    centres = sums / torch.bincount(labels, minlength=k).clamp_min(1)[:, None]
    dist = (emb - centres[labels]).norm(dim=1).numpy().astype(np.float64)
    median = np.zeros(k)
    for c in np.unique(ctx.labels):
        median[c] = np.median(dist[ctx.labels == c])
    return ctx.top(-np.abs(dist - median[ctx.labels]))


@register_method("kcenter", columns=("embedding",))
def _kcenter(ctx: SelectionContext) -> Selection:
    """Greedy k-center on the embeddings (per class, or over all samples with
    ``per_class=False``), starting from a seeded random sample; batched in torch."""
    import torch

    emb = _embeddings(ctx)
    rng = ctx.rng(per_epoch=True)
    chosen = []
    for rows, k in ctx.groups():
        if k == 0:
            continue
        x = emb[torch.from_numpy(rows)]
        picked = np.empty(k, dtype=np.int64)
        picked[0] = rng.integers(len(rows))
        min_d = (x - x[picked[0]]).pow(2).sum(1)
        for i in range(1, k):
            nxt = int(torch.argmax(min_d))
            picked[i] = nxt
            min_d = torch.minimum(min_d, (x - x[nxt]).pow(2).sum(1))
        chosen.append(rows[picked])
    rows = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    return Selection(ctx.ids[rows])


@register_method("infobatch", columns=("loss",), options={"prune_ratio": 0.5, "anneal": 0.875},
                 exact_size=False)
def _infobatch(ctx: SelectionContext) -> Selection:
    """InfoBatch (Qin et al. 2024): randomly drop ``prune_ratio`` of the samples whose loss
    is below the mean and weight the kept ones by 1 / (1 - prune_ratio); the full data
    from ``anneal * epochs`` on. Decides its own size (``fraction`` is not used)."""
    r, anneal = float(ctx.options["prune_ratio"]), float(ctx.options["anneal"])
    if not 0 <= r < 1:
        raise ValueError(f"infobatch option prune_ratio must be in [0, 1); got {r}")
    if ctx.epochs is not None and ctx.epoch >= anneal * ctx.epochs:
        return Selection(ctx.ids)
    loss = ctx.column("loss").astype(np.float64)
    low = loss < loss.mean()
    drop = low & (ctx.rng(per_epoch=True).random(len(loss)) < r)
    keep = ~drop
    weights = np.where(low[keep], 1.0 / (1.0 - r), 1.0)
    return Selection(ctx.ids[keep], weights)


# ------------------------------------------------------------------ reading score tables
@dataclass
class ScoreRounds:
    """Scoring rounds read from one or more tables: ``rounds[i]`` holds the columns of the
    round at ``epochs[i]`` as numpy arrays, rows sorted by sample_id."""

    epochs: list[int]
    rounds: list[dict[str, np.ndarray]]
    fingerprint: dict | None
    sources: list[str]


def aligned_column(rounds: list[dict[str, np.ndarray]], ids: np.ndarray, name: str
                   ) -> np.ndarray:
    """rounds x len(ids) float array of column ``name`` of every round, aligned to ``ids``
    (each round's rows are sorted by sample_id); NaN where a round lacks the sample or the
    column."""
    out = np.full((len(rounds), len(ids)), np.nan)
    for r, rnd in enumerate(rounds):
        if name not in rnd or len(rnd["sample_id"]) == 0:
            continue
        rid = rnd["sample_id"]
        pos = np.searchsorted(rid, ids).clip(0, len(rid) - 1)
        present = rid[pos] == ids
        out[r, present] = rnd[name][pos[present]]
    return out


def _column_numpy(col: pa.ChunkedArray) -> np.ndarray:
    col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        if col.null_count:
            raise TableError("embedding column has missing rows")
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
    if col.null_count:
        if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
            return col.cast(pa.float64()).fill_null(np.nan).to_numpy()
    return col.to_numpy(zero_copy_only=False)


def _read_parquet(path: str, columns: list[str] | None) -> tuple[dict[str, np.ndarray], dict]:
    """Columns of a Parquet file as numpy arrays, read one row-group batch at a time into
    preallocated arrays (no second in-memory copy of the table), cast to the contract's
    types. Returns the arrays and the file's coreset_curate metadata."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{path} is not a readable Parquet file: {err}") from err
    schema = pf.schema_arrow
    names = schema.names if columns is None else [c for c in columns if c in schema.names]
    missing = [c for c in BASE_COLUMNS if c not in schema.names]
    if missing:
        raise TableError(f"{path} lacks column(s) {missing}; it has {schema.names}")
    known = pa.schema([SCORE_SCHEMA.field(c) for c in names if c in SCORE_SCHEMA.names])
    n = pf.metadata.num_rows
    out: dict[str, np.ndarray] = {}
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1 << 20, columns=names):
            table = conform(pa.Table.from_batches([batch]), known, path)
            m = table.num_rows
            for c in names:
                values = _column_numpy(table.column(c))
                if c not in out:
                    out[c] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
                elif values.dtype != out[c].dtype:  # nulls in a later batch: widen to float
                    out[c] = out[c].astype(np.float64)
                out[c][row : row + m] = values
            row += m
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{path} could not be read: {err}") from err
    if not out:
        out = {c: np.empty(0) for c in names}
    return out, table_metadata(schema)


def _read_source(source, i: int, columns: list[str] | None) -> tuple[dict, dict, str]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"score table not found: {path}")
        cols, meta = _read_parquet(path, columns)
        return cols, meta, path
    name = f"<table {i}>"
    if not isinstance(source, pa.Table):
        try:
            source = pa.Table.from_pandas(source, preserve_index=False)
        except Exception as err:  # noqa: BLE001 - anything that is not a table
            raise TypeError(f"score table {i} must be a path, a pyarrow.Table or a pandas."
                            f"DataFrame; got {type(source).__name__}") from err
    missing = [c for c in BASE_COLUMNS if c not in source.column_names]
    if missing:
        raise TableError(f"{name} lacks column(s) {missing}; it has {source.column_names}")
    names = source.column_names if columns is None else [c for c in columns
                                                         if c in source.column_names]
    known = pa.schema([SCORE_SCHEMA.field(c) for c in names if c in SCORE_SCHEMA.names])
    table = conform(source.select(names), known, name)
    return {c: _column_numpy(table.column(c)) for c in names}, table_metadata(source), name


def load_rounds(scores, columns: Sequence[str] | None = None) -> ScoreRounds:
    """Read score tables (paths, pyarrow tables or DataFrames; one or a list) into rounds.

    Only ``columns`` (plus sample_id, label and epoch) are read from Parquet files; all
    tables must come from the same dataset (same fingerprint).
    """
    sources = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    if not sources:
        raise ValueError("selection needs at least one score table")
    want = None if columns is None else list(dict.fromkeys([*BASE_COLUMNS, *columns]))
    parts, names, fp = [], [], None
    for i, src in enumerate(sources):
        cols, meta, name = _read_source(src, i, want)
        t_fp = meta.get("fingerprint")
        if t_fp is not None:
            if fp is None:
                fp = t_fp
            else:
                check_fingerprint(fp, t_fp, name)
        parts.append(cols)
        names.append(name)
    if len(parts) == 1:
        cols = parts[0]
    else:
        shared = [c for c in parts[0] if all(c in p for p in parts)]
        cols = {c: np.concatenate([p[c] for p in parts]) for c in shared}
    del parts
    if len(cols["sample_id"]) == 0:
        raise TableError("the score tables have no rows")
    for c, v in cols.items():
        if v.dtype.kind != "f" or v.ndim != 1:
            continue
        # columns that may be null (read as NaN) may not be infinite; the others neither NaN
        bad = np.isinf(v) if c in ("ds", "ref_prob_label", "ref_pred") else ~np.isfinite(v)
        if bad.any():
            raise TableError(f"score column {c!r} has {int(bad.sum())} NaN or infinite values")
    if cols["label"].min() < 0:
        raise TableError("labels must be non-negative class indices")
    cols["label"] = _small_ints(cols["label"])
    epochs_col = cols.pop("epoch")
    lo, hi = int(epochs_col.min()), int(epochs_col.max())
    round_epochs = np.array([lo]) if lo == hi else np.unique(epochs_col)
    rounds = []
    for e in round_epochs:
        rows = None if len(round_epochs) == 1 else np.flatnonzero(epochs_col == e)
        part = cols if rows is None else {c: v[rows] for c, v in cols.items()}
        ids = part["sample_id"]
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            order = np.argsort(ids, kind="stable")
            part = {c: v[order] for c, v in part.items()}
            if (part["sample_id"][1:] == part["sample_id"][:-1]).any():
                raise TableError(f"duplicate sample_id values in the scoring round of epoch {e}")
        rounds.append(part)
    return ScoreRounds([int(e) for e in round_epochs], rounds, fp, names)


# ------------------------------------------------------------------ entry points
def _check_request(method, fraction, seed, min_per_class, options) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered methods: {sorted(METHODS)}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0 < fraction <= 1):
        raise ValueError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    if not _is_int(min_per_class) or min_per_class < 0:
        raise ValueError(f"min_per_class must be a non-negative integer; got {min_per_class!r}")
    spec = METHODS[method]
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = sorted(spec.options) or "none"
        raise ValueError(f"method {method!r} has no option(s) {unknown}; it accepts {accepted}")
    return {**spec.options, **options}


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
) -> Selection:
    """The subset for ``epoch`` chosen by ``method`` from one or more score tables.

    ``scores``: a score table (path, pyarrow or pandas), a list of them (scoring rounds),
    or a ``ScoreRounds`` from ``load_rounds``. ``options``: method-specific settings (for
    example ``{"hard_cut": 0.2}`` for ``ccs``); unknown keys are refused.
    """
    opts = _check_request(method, fraction, seed, min_per_class, options)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; registered: {sorted(SCHEDULES)}")
    _check_epochs(epoch, epochs)
    spec = METHODS[method]
    data = scores if isinstance(scores, ScoreRounds) else load_rounds(scores, spec.columns)
    usable = [i for i, e in enumerate(data.epochs) if e <= epoch]
    if not usable:
        if spec.columns:
            raise TableError(f"no scoring round at or before epoch {epoch}; the tables hold "
                             f"rounds at epochs {data.epochs}")
        usable = [0]  # ids and labels only: any round will do
    current = usable[-1]
    ctx = SelectionContext(data.rounds[current], data.rounds[: current + 1], float(fraction),
                           int(epoch), epochs, schedule, int(seed), bool(per_class),
                           int(min_per_class), opts)
    return spec.fn(ctx)


def index_table(selections: dict[int, Selection], *, metadata: dict | None = None) -> pa.Table:
    """Index rows (epoch, sample_id, weight) for ``{epoch: Selection}``, sorted by epoch
    then sample_id, with the index metadata."""
    parts = [(np.full(len(s), e, dtype=np.int32), s.sample_ids, s.weights)
             for e, s in sorted(selections.items())]
    cols = [np.concatenate([p[i] for p in parts]) if parts else np.array([], dtype=dt)
            for i, dt in enumerate((np.int32, np.int64, np.float32))]
    table = pa.table(dict(zip(INDEX_SCHEMA.names, cols)), schema=INDEX_SCHEMA)
    # no creation time: the same scores, method and seed give a byte-identical index
    meta = {k: v for k, v in make_metadata(**(metadata or {})).items() if k != "created"}
    return with_metadata(table, meta)


def merge_index(existing: pa.Table, new: pa.Table) -> pa.Table:
    """``existing`` with the epochs in ``new`` replaced by ``new``'s rows; metadata of
    ``new`` with the ``sources`` of both."""
    meta_old, meta_new = table_metadata(existing), table_metadata(new)
    existing = conform(existing, INDEX_SCHEMA, "existing index").select(INDEX_SCHEMA.names)
    new_epochs = np.unique(new.column("epoch").to_numpy())
    old = existing.filter(pa.array(~np.isin(existing.column("epoch").to_numpy(), new_epochs)))
    table = pa.concat_tables([old.cast(INDEX_SCHEMA),
                              new.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)])
    order = np.lexsort((table.column("sample_id").to_numpy(), table.column("epoch").to_numpy()))
    for key in ("method", "fraction", "fingerprint"):
        if key in meta_old and key in meta_new and meta_old[key] != meta_new[key]:
            raise ValueError(f"the index was made with {key}={meta_old[key]!r}; this selection "
                             f"has {key}={meta_new[key]!r}: write it to another index")
    sources = list(dict.fromkeys(meta_old.get("sources", []) + meta_new.get("sources", [])))
    return with_metadata(table.take(pa.array(order)), {**meta_new, "sources": sources})


def add_to_index(path: str | os.PathLike, selection: Selection, epochs: Sequence[int], *,
                 metadata: dict | None = None, replace: bool = False) -> pa.Table:
    """Write ``selection`` as the subset of ``epochs`` into the index file ``path``: a new
    index, or the existing one extended (its other epochs kept). Epochs it already has are
    replaced only with ``replace=True``; written atomically. Returns the written index."""
    from .tables import read_table, validate_index, write_table

    new = index_table({e: selection for e in epochs}, metadata=metadata)
    if os.path.exists(path):
        existing = validate_index(read_table(path), str(path))
        clash = sorted(set(existing.column("epoch").to_pylist()) & set(epochs))
        if clash and not replace:
            raise FileExistsError(f"{path} already has epoch(s) {clash}; pass --overwrite to "
                                  "replace them")
        new = merge_index(existing, new)
    write_table(new, path, overwrite=True)
    return new
