"""Reading score tables into scoring rounds: only the columns a method needs, cast to the
contract's types, rows sorted by sample_id, one dataset (fingerprint) across tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..common.checks import InputTypeError, align
from ..common.fingerprint import check_fingerprint
from ..tasks import table_task
from ..common.tables import SCORE_SCHEMA, TableError, conform, table_metadata

__all__ = ["ScoreRounds", "load_rounds", "aligned_column", "small_ints", "BASE_COLUMNS"]

BASE_COLUMNS = ("sample_id", "label", "epoch")
# score columns a table may leave null (no reference model)
NULLABLE_SCORES = ("ds", "ref_prob_label", "ref_pred")


def small_ints(labels: np.ndarray) -> np.ndarray:
    """Labels as the narrowest integer type, so numpy's stable sort is a radix sort.

    Args:
        labels: non-negative integer labels.

    Returns:
        The labels as int16 (below 2**15) or int32; no copy when already that type.
    """
    top = int(labels.max()) if len(labels) else 0
    return labels.astype(np.int16 if top < 2**15 else np.int32, copy=False)


# ------------------------------------------------------------------ reading score tables
@dataclass
class ScoreRounds:
    """Scoring rounds read from one or more tables (what ``load_rounds`` returns).

    Attributes:
        epochs: the epoch of every round, ascending.
        rounds: ``rounds[i]`` holds the columns of the round at ``epochs[i]`` as numpy
            arrays, rows sorted by sample_id.
        fingerprint: the dataset fingerprint the tables share, or None.
        sources: a name for every table read (its path, or its position in the list).
        tasks: the tasks of the tables read (``tasks.table_task``), each named once.
    """

    epochs: list[int]
    rounds: list[dict[str, np.ndarray]]
    fingerprint: dict | None
    sources: list[str]
    tasks: list[str] = field(default_factory=list)


def aligned_column(rounds: list[dict[str, np.ndarray]], ids: np.ndarray, name: str
                   ) -> np.ndarray:
    """Column ``name`` of every round, aligned to ``ids``.

    Args:
        rounds: rounds as in ``ScoreRounds.rounds`` (rows sorted by sample_id).
        ids: the sample ids to align to.
        name: the column.

    Returns:
        A ``(len(rounds), len(ids))`` float array; NaN where a round lacks the sample or
        the column.
    """
    out = np.full((len(rounds), len(ids)), np.nan)
    for r, rnd in enumerate(rounds):
        if name not in rnd or len(rnd["sample_id"]) == 0:
            continue
        pos, present = align(rnd["sample_id"], ids)
        out[r, present] = rnd[name][pos[present]]
    return out


def check_finite(cols: dict[str, np.ndarray], allow_missing: bool, where: str = "") -> None:
    """Refuse NaN or infinite scores: columns that may be null (read as NaN: ``ds``,
    ``ref_prob_label``, ``ref_pred``, or every score with ``allow_missing``) may not be
    infinite, the others neither NaN.

    Args:
        cols: columns as numpy arrays (only 1-d float ones are checked).
        allow_missing: every score may be null.
        where: appended to the error (``" in one row group"``).

    Raises:
        TableError: a column holds such a value.
    """
    for c, v in cols.items():
        if v.dtype.kind != "f" or v.ndim != 1:
            continue
        nullable = allow_missing or c in NULLABLE_SCORES
        bad = np.isinf(v) if nullable else ~np.isfinite(v)
        if bad.any():
            raise TableError(f"score column {c!r} has {int(bad.sum())} NaN or infinite "
                             f"values{where}")


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


def _contract(names: list[str], allow_missing: bool) -> pa.Schema:
    """The contract's fields among ``names``; their scores nullable with ``allow_missing``."""
    fields = [SCORE_SCHEMA.field(c) for c in names if c in SCORE_SCHEMA.names]
    return pa.schema([f.with_nullable(True) if allow_missing and f.name not in BASE_COLUMNS
                      else f for f in fields])


def _read_parquet(path: str, columns: list[str] | None, allow_missing: bool = False
                  ) -> tuple[dict[str, np.ndarray], dict]:
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
    known = _contract(names, allow_missing)
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


def _read_source(source, i: int, columns: list[str] | None, allow_missing: bool = False
                 ) -> tuple[dict, dict, str]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"score table not found: {path}")
        cols, meta = _read_parquet(path, columns, allow_missing)
        return cols, meta, path
    name = f"<table {i}>"
    if not isinstance(source, pa.Table):
        try:
            source = pa.Table.from_pandas(source, preserve_index=False)
        except Exception as err:  # noqa: BLE001 - anything that is not a table
            raise InputTypeError(f"score table {i} must be a path, a pyarrow.Table or a pandas."
                                 f"DataFrame; got {type(source).__name__}") from err
    missing = [c for c in BASE_COLUMNS if c not in source.column_names]
    if missing:
        raise TableError(f"{name} lacks column(s) {missing}; it has {source.column_names}")
    names = source.column_names if columns is None else [c for c in columns
                                                         if c in source.column_names]
    known = _contract(names, allow_missing)
    table = conform(source.select(names), known, name)
    return {c: _column_numpy(table.column(c)) for c in names}, table_metadata(source), name


def load_rounds(scores, columns: Sequence[str] | None = None, *,
                allow_missing: bool = False) -> ScoreRounds:
    """Read score tables (paths, pyarrow tables or DataFrames; one or a list) into rounds.

    ``allow_missing``: rows may lack a score (null, read as NaN), as in a training-step
    round before every sample was trained on; infinite values are refused either way.

    Only ``columns`` (plus sample_id, label and epoch) are read from Parquet files; all
    tables must come from the same dataset (same fingerprint).

    Args:
        scores: one score table or a list of them (paths, pyarrow tables, DataFrames).
        columns: the score columns to read (default: all).
        allow_missing: accept null scores (read as NaN).

    Returns:
        The ``ScoreRounds``, one round per distinct epoch.

    Raises:
        ValueError: no table is given.
        TableError: a table breaks the contract, has no rows, has NaN or infinite
            scores, negative labels, or a sample id twice in one round.
        FingerprintMismatch: the tables come from different datasets.
    """
    sources = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    if not sources:
        raise ValueError("selection needs at least one score table")
    want = None if columns is None else list(dict.fromkeys([*BASE_COLUMNS, *columns]))
    parts, names, fp, lowest, rule, tasks = [], [], None, None, None, []
    for i, src in enumerate(sources):
        cols, meta, name = _read_source(src, i, want, allow_missing)
        task = table_task(meta)  # the lowest label a table holds is its task's
        lowest = task.min_label if lowest is None else max(lowest, task.min_label)
        rule = task.label_rule if rule in (None, task.label_rule) else ""
        if task.name not in tasks:
            tasks.append(task.name)
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
    check_finite(cols, allow_missing)
    # a task may hold a label below 0 (a group of its own)
    if cols["label"].min() < lowest:
        raise TableError("labels must be non-negative class indices" + (rule or ""))
    cols["label"] = small_ints(cols["label"])
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
    return ScoreRounds([int(e) for e in round_epochs], rounds, fp, names, tasks)


