"""Selection out of core: a score table larger than a memory budget is read by row groups.

The in-memory path (``load_rounds`` + the method) holds every column it reads; at hundreds
of millions of rows that no longer fits. For the methods that rank rows by a score
computed row by row (``STREAMABLE``: ACS, EL2N/EVS, loss, entropy, margin, least
confidence, random, random_epoch) the per-class top-k needs only the k best rows of every
class seen so far, so two passes over the file suffice:

1. labels (and ids, epochs) only: the rows per class, hence the class budgets, and the
   checks of the in-memory path (one scoring round, ids sorted and distinct, labels
   non-negative, exclusion ids all present);
2. batch by batch, the method computes its score (through its own registered function, so
   its checks and its arithmetic are the same), rows that cannot beat the current k-th
   best of their class are dropped at once, the rest are merged into their class's kept
   rows now and then and cut back to k by a linear-time partition (``TopK``).

Ties go to the smaller sample id, as in memory, so both paths return the same ids. Peak
memory is one batch, the kept rows (``fraction`` of the rows, 16 bytes each) and the rows
waiting to be merged (at most half as many, or four batches), whatever the table's size;
nothing here imports torch. The table must be sorted by sample_id (as the extractors
and ``write_scores`` write it); an unsorted one gets an error that says so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..common.tables import TableError, conform, table_metadata
from ..tasks import table_task
from .core import METHODS, Selection, SelectionContext, unknown_exclusions
from .rounds import BASE_COLUMNS, _column_numpy, _contract, check_finite, small_ints
from .topk import TopK, class_budget

__all__ = ["STREAMABLE", "default_memory_budget", "in_memory_bytes", "parse_memory",
           "select_streamed"]

# methods whose selection is ``ctx.top`` of a score computed row by row
STREAMABLE = frozenset({"acs", "evs", "el2n", "loss", "entropy", "margin",
                        "least_confidence", "random", "random_epoch"})
BATCH_ROWS = 1 << 20


def default_memory_budget() -> int:
    """A quarter of this machine's physical memory, in bytes (8 GiB where it is unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def parse_memory(text: str) -> int:
    """Bytes from ``"1500M"``, ``"2G"``, ``"2GiB"``, ``"800MB"`` or a plain number of bytes.

    Args:
        text: the size.

    Returns:
        The size in bytes.

    Raises:
        ValueError: the text is not a positive size.
    """
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory budget must be a positive size such as 1500M or 2G; "
                         f"got {text!r}")
    return int(value * units[unit])


def in_memory_bytes(path: str, columns) -> int:
    """An estimate of the in-memory path's peak for reading ``columns`` of a Parquet file:
    its arrays (8 bytes a value) and as much again for the method's temporaries; 0 for a
    file that is not Parquet (the in-memory path refuses it with its own message)."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError):
        return 0  # not a Parquet file: the in-memory path reads it and says what is wrong
    names = set(pf.schema_arrow.names)
    width = len(BASE_COLUMNS) + sum(1 for c in columns if c in names)
    return int(pf.metadata.num_rows) * width * 8 * 2


class _Recorder(SelectionContext):
    """A context over one batch whose ``top`` hands back the score instead of selecting,
    and whose generator continues across batches (one stream, as over the whole table)."""

    generators: dict

    def top(self, score):  # noqa: D102 - see SelectionContext.top
        self.recorded = np.asarray(score, dtype=np.float64)
        return Selection(self.ids[:0])

    def rng(self, per_epoch: bool) -> np.random.Generator:  # noqa: D102
        if per_epoch not in self.generators:
            self.generators[per_epoch] = SelectionContext.rng(self, per_epoch)
        return self.generators[per_epoch]


def _batches(pf: pq.ParquetFile, path: str, names: list[str], known: pa.Schema,
             batch_rows: int):
    try:
        # one row group at a time: over the whole file, pyarrow's reader buffers several
        # row groups ahead (about 4x the memory on 1M-row groups)
        for group in range(pf.metadata.num_row_groups):
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group],
                                         columns=names):
                table = conform(pa.Table.from_batches([batch]), known, path)
                yield {c: _column_numpy(table.column(c)) for c in names}
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{path} could not be read: {err}") from err


def select_streamed(path, method: str, fraction: float, *, epoch: int, epochs: int | None,
                    schedule: str, seed: int, per_class: bool, min_per_class: int,
                    options: dict, exclude=None, batch_rows: int = BATCH_ROWS) -> Selection:
    """``select`` for one Parquet score table, read by row groups (see the module doc).

    The arguments are ``select``'s, already checked (``options`` with the defaults filled
    in); ``batch_rows`` is the rows read at a time.

    Args:
        path: the score table (Parquet, one scoring round, sorted by sample_id).
        method: a method in ``STREAMABLE``.
        fraction: share of the samples to keep.
        epoch: the epoch to select for.
        epochs: the run's epoch count, or None.
        schedule: the ACS schedule.
        seed: the seed of the random methods.
        per_class: per-class budgets (True) or one overall.
        min_per_class: the smallest per-class budget.
        options: the method's options, defaults filled in.
        exclude: sample ids the subset must not hold, as ``select`` takes them.
        batch_rows: rows read at a time.

    Returns:
        The ``Selection``, the same ids as the in-memory path.

    Raises:
        ValueError: the method does not stream, or as ``select``.
        TableError: the table breaks the contract, holds more than one scoring round or
            one after ``epoch``, or is not sorted by sample_id.
        UnknownIds: ``exclude`` names ids the table lacks.
    """
    if method not in STREAMABLE:
        raise ValueError(f"method {method!r} does not select out of core; streamed methods: "
                         f"{sorted(STREAMABLE)}")
    table = open_streamed(path, method, fraction, epoch=epoch, per_class=per_class,
                          min_per_class=min_per_class, exclude=exclude, batch_rows=batch_rows)
    # pass 2: the method's score batch by batch; the k best of every class are kept
    best = TopK(table.budget, batch_rows)
    for ids, group, ctx in table.scored(_Recorder, epoch=epoch, epochs=epochs,
                                        schedule=schedule, seed=seed, options=options):
        best.add(ids, group, ctx.recorded)
    return Selection(best.result_ids())


@dataclass
class StreamedTable:
    """A score table opened for out-of-core selection: its first pass done (the checks,
    the class budgets by group: the label, one up where a task's label -1 is a group of
    its own; one group overall without per-class budgets) and its batches to score."""

    pf: pq.ParquetFile
    path: str
    method: str
    fraction: float
    per_class: bool
    min_per_class: int
    excluded: np.ndarray | None
    shift: int
    budget: np.ndarray
    kept_counts: np.ndarray
    batch_rows: int

    def scored(self, recorder, *, epoch: int, epochs, schedule: str, seed: int,
               options: dict):
        """Batch by batch: ``(sample ids, group of each row, the recorder context the
        method ran on)``; the excluded rows left out, each batch checked as in memory."""
        spec = METHODS[self.method]
        have = self.pf.schema_arrow.names
        want = list(dict.fromkeys(["sample_id", "label",
                                   *[c for c in spec.columns if c in have]]))
        known = _contract(want, spec.partial)
        generators: dict = {}
        last_id = None
        for cols in _batches(self.pf, self.path, want, known, self.batch_rows):
            ids = cols["sample_id"]
            if not len(ids):
                continue
            if (len(ids) > 1 and not (ids[1:] > ids[:-1]).all()) or (
                    last_id is not None and ids[0] <= last_id):
                raise TableError(f"{self.path} is not sorted by sample_id (or repeats one): "
                                 "the out-of-core path needs it sorted; write it sorted, or "
                                 "raise the memory budget")
            last_id = int(ids[-1])
            check_finite(cols, spec.partial, " in one row group (there may be more)")
            cols["label"] = small_ints(cols["label"].astype(np.int64) + self.shift)
            if self.excluded is not None:
                keep = ~np.isin(ids, self.excluded)
                cols = {k: v[keep] for k, v in cols.items()}
                if not len(cols["sample_id"]):
                    continue
            ctx = recorder(cols, [cols], float(self.fraction), int(epoch), epochs, schedule,
                           int(seed), bool(self.per_class), int(self.min_per_class), options,
                           None)
            ctx.generators = generators
            spec.fn(ctx)
            n = len(cols["sample_id"])
            group = (cols["label"].astype(np.int64) if self.per_class
                     else np.zeros(n, np.int64))
            yield cols["sample_id"], group, ctx


def open_streamed(path, method: str, fraction: float, *, epoch: int, per_class: bool,
                  min_per_class: int, exclude, batch_rows: int) -> StreamedTable:
    """Open ``path`` for out-of-core selection: pass 1 (rows per class, the checks that
    need the whole table) and the budgets; ``select_streamed`` documents the arguments.

    Raises:
        TableError, UnknownIds, ValueError: as ``select_streamed``.
    """
    from ..labels.cleaning import exclusions

    spec = METHODS[method]
    path = os.fspath(path)
    pf = _open(path)
    excluded = None if exclude is None else exclusions(exclude)
    first = _first_pass(pf, path, excluded, batch_rows)
    if spec.columns and first.round_epoch > epoch:
        raise TableError(f"no scoring round at or before epoch {epoch}; the tables hold "
                         f"rounds at epochs {[first.round_epoch]}")
    if excluded is not None:
        if not first.seen_excluded.all():
            raise unknown_exclusions(excluded[~first.seen_excluded])
        if not first.kept_counts.sum():
            raise ValueError("the exclusion list leaves no sample to select from")
    shift = 1 if first.lo_label < 0 else 0
    counts, kept_counts = first.counts, first.kept_counts
    if not shift:
        counts, kept_counts = counts[1:], kept_counts[1:]
    budget = _budgets(counts, kept_counts, fraction, per_class, min_per_class)
    if not per_class:
        kept_counts = np.array([int(kept_counts.sum())])
    return StreamedTable(pf, path, method, float(fraction), bool(per_class),
                         int(min_per_class), excluded, shift, budget, kept_counts,
                         int(batch_rows))


def _open(path: str) -> pq.ParquetFile:
    """The score table, opened, with the base columns there."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"score table not found: {path}")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{path} is not a readable Parquet file: {err}") from err
    have = pf.schema_arrow.names
    missing = [c for c in BASE_COLUMNS if c not in have]
    if missing:
        raise TableError(f"{path} lacks column(s) {missing}; it has {have}")
    return pf


@dataclass
class _FirstPass:
    """What pass 1 learns: rows per class (one class up, so that a task's label -1 is a
    group of its own), those left after the exclusions, the lowest label, the round's
    epoch, and which excluded ids the table holds."""

    counts: np.ndarray
    kept_counts: np.ndarray
    lo_label: int
    round_epoch: int
    seen_excluded: np.ndarray | None


def _first_pass(pf, path: str, excluded: np.ndarray | None, batch_rows: int) -> _FirstPass:
    """Pass 1: rows per class, and the checks that need the whole table. It reads the
    labels (and the ids, to check an exclusion list); the scoring round comes from the row
    groups' statistics where the file has them, else from the epoch column."""
    task = table_task(table_metadata(pf.schema_arrow))
    seen_excluded = None if excluded is None else np.zeros(len(excluded), dtype=bool)
    round_epoch = _round_from_statistics(pf, path)
    names = ["label"]
    if excluded is not None:
        names.append("sample_id")
    if round_epoch is None:
        names.append("epoch")
    counts = np.zeros(0, dtype=np.int64)
    kept_counts = np.zeros(0, dtype=np.int64)
    lo_label, n = 0, 0
    for cols in _batches(pf, path, names, _contract(names, False), batch_rows):
        labels = cols["label"]
        if not len(labels):
            continue
        if "epoch" in cols:
            ep = cols["epoch"]
            if int(ep.min()) != int(ep.max()) or (round_epoch is not None
                                                  and int(ep[0]) != round_epoch):
                raise _several_rounds(path)
            round_epoch = int(ep[0])
        lo_label = min(lo_label, int(labels.min()))
        if lo_label < task.min_label:
            raise TableError("labels must be non-negative class indices" + task.label_rule)
        grouped = labels.astype(np.int64) + 1
        counts = _add(counts, np.bincount(grouped))
        if excluded is not None:
            ids = cols["sample_id"]
            hit = np.isin(ids, excluded)
            seen_excluded |= np.isin(excluded, ids[hit])
            kept_counts = _add(kept_counts, np.bincount(grouped[~hit]))
        n += len(labels)
    if n == 0:
        raise TableError("the score tables have no rows")
    if excluded is None:
        kept_counts = counts
    else:  # as long as counts (the excluded may be a class's last rows)
        kept_counts = _add(kept_counts, np.zeros(len(counts), dtype=np.int64))
    return _FirstPass(counts, kept_counts, lo_label, round_epoch, seen_excluded)


def _several_rounds(path: str) -> TableError:
    return TableError(f"{path} holds more than one scoring round; the out-of-core path reads "
                      "one (select from several rounds in memory)")


def _round_from_statistics(pf: pq.ParquetFile, path: str) -> int | None:
    """The one epoch every row group's statistics give, or None where a row group has none
    (then pass 1 reads the column)."""
    meta = pf.metadata
    col = pf.schema_arrow.get_field_index("epoch")
    if meta.num_rows == 0 or not pa.types.is_integer(pf.schema_arrow.field(col).type):
        return None  # read (and refused, where its type is wrong) as a column
    lo = hi = None
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if group.num_rows == 0:
            continue
        stats = group.column(col).statistics
        if stats is None or not stats.has_min_max or stats.null_count:
            return None
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    if lo is None:
        return None
    if lo != hi:
        raise _several_rounds(path)
    return int(lo)


def _budgets(counts: np.ndarray, kept_counts: np.ndarray, fraction: float, per_class: bool,
             min_per_class: int) -> np.ndarray:
    """The budgets, as SelectionContext.budget / total_budget / top_fraction make them."""
    if per_class:
        present = kept_counts > 0
        budget = np.zeros(len(kept_counts), dtype=np.int64)
        budget[present] = np.minimum(class_budget(counts[present], fraction, min_per_class),
                                     kept_counts[present])
        return budget
    whole = int(counts.sum())
    m = int(kept_counts.sum())
    return np.array([min(m, max(int(math.floor(fraction * whole + 0.5)), min_per_class))])


def _add(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    size = max(len(total), len(part))
    out = np.zeros(size, dtype=np.int64)
    out[: len(total)] += total
    out[: len(part)] += part
    return out
