"""The Parquet contracts between the parts: score tables and indexes.

Both are plain Parquet files with explicit Arrow schemas and JSON metadata under the
schema key ``coreset_curate``; pandas, pyarrow, DuckDB and ``datasets`` open them as they
are. Every write goes to a temporary file in the target folder and is renamed into place,
so a failed or killed write leaves the old file as it was and nothing half-written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from .atomic import atomic_path

__all__ = [
    "META_KEY",
    "SCORE_SCHEMA",
    "INDEX_SCHEMA",
    "TableError",
    "make_metadata",
    "table_metadata",
    "with_metadata",
    "write_table",
    "read_table",
    "validate_scores",
    "validate_index",
    "conform",
]

META_KEY = b"coreset_curate"

SCORE_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("evs", pa.float32(), nullable=False),
    pa.field("ds", pa.float32()),
    pa.field("loss", pa.float32(), nullable=False),
    pa.field("margin", pa.float32(), nullable=False),
    pa.field("entropy", pa.float32(), nullable=False),
    pa.field("pred", pa.int64(), nullable=False),
    pa.field("prob_label", pa.float32(), nullable=False),
    pa.field("ref_pred", pa.int64()),
    pa.field("ref_prob_label", pa.float32()),
])

INDEX_SCHEMA = pa.schema([
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("weight", pa.float32(), nullable=False),
])


class TableError(ValueError):
    """A file is not a valid score table or index."""


def make_metadata(**fields) -> dict:
    """Metadata dict with the package version and creation time added.

    The time is ``$SOURCE_DATE_EPOCH`` when set (the reproducible-builds convention), so
    that runs repeated with it write byte-identical tables.

    Args:
        **fields: further entries (JSON-serialisable), for example ``arch="resnet20"``.

    Returns:
        ``{"package_version": ..., "created": "YYYY-MM-DDTHH:MM:SSZ", **fields}``.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = time.gmtime(int(epoch)) if epoch and epoch.isdigit() else time.gmtime()
    return {"package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", when), **fields}


def table_metadata(table: pa.Table | pa.Schema) -> dict:
    """The toolkit's metadata of a table (its ``coreset_curate`` schema key).

    Args:
        table: a table or its schema.

    Returns:
        The decoded JSON dict; ``{}`` when the table has none.

    Raises:
        TableError: the metadata is there but is not valid JSON.
    """
    schema = table if isinstance(table, pa.Schema) else table.schema
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise TableError(f"the {META_KEY.decode()} metadata is not valid JSON: {err}") from err


def with_metadata(table: pa.Table, meta: dict) -> pa.Table:
    """``table`` with ``meta`` as its toolkit metadata (other schema metadata kept).

    Args:
        table: any Arrow table.
        meta: the dict to store (JSON; keys sorted so equal dicts give equal bytes).

    Returns:
        A new table; ``table`` itself is not changed.
    """
    existing = dict(table.schema.metadata or {})
    existing[META_KEY] = json.dumps(meta, sort_keys=True, default=str).encode()
    return table.replace_schema_metadata(existing)


def write_table(table: pa.Table, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``table`` to ``path`` as Parquet atomically (temporary file, then rename).

    Args:
        table: the table to write (zstd-compressed).
        path: the target file; missing parent folders are created.
        overwrite: replace an existing file.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        IsADirectoryError: ``path`` is a folder.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name ending in .parquet")
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_table(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet file (score table, index, labels table, audit) as it is.

    Args:
        path: the file.

    Returns:
        The Arrow table, metadata included; not validated (see ``validate_scores`` and
        ``validate_index``).

    Raises:
        FileNotFoundError: no file at ``path``.
        TableError: the file is not readable Parquet.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError(f"{path} is not a readable Parquet file: {err}") from err


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Check required columns, cast compatible types to the contract's, keep extra columns.

    Args:
        table: the table to check.
        schema: the contract (``SCORE_SCHEMA`` or ``INDEX_SCHEMA``).
        what: how the table is named in error messages.

    Returns:
        ``table`` with the contract's columns cast to its types.

    Raises:
        TableError: a column is missing, has a type that cannot be cast, or has missing
            values where the contract allows none.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise TableError(f"{what} lacks column(s) {missing}; it has {table.column_names}")
    for f in schema:
        col = table.column(f.name)
        if col.type != f.type:
            # floats may fill integer columns when every value is whole: pandas turns an
            # integer column with missing values (ref_pred without a reference) into floats
            numeric = pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
            ok = (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)) and numeric
            if not ok:
                raise TableError(f"{what} column {f.name!r} has type {col.type}; expected {f.type}")
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise TableError(f"{what} column {f.name!r} does not fit {f.type}: {err}") from err
            table = table.set_column(table.schema.get_field_index(f.name), f.name, col)
        if not f.nullable and table.column(f.name).null_count:
            raise TableError(f"{what} column {f.name!r} has {table.column(f.name).null_count} "
                             "missing values")
    return table


def validate_scores(table: pa.Table, what: str = "score table") -> pa.Table:
    """Check a score table against the contract (``SCORE_SCHEMA``).

    Args:
        table: the score table (one or several scoring rounds).
        what: how the table is named in error messages.

    Returns:
        ``table`` conformed to ``SCORE_SCHEMA`` (see ``conform``).

    Raises:
        TableError: a contract column is missing or mistyped, the table is empty, a score
            is NaN or infinite, or a sample id repeats within one scoring round.
    """
    table = conform(table, SCORE_SCHEMA, what)
    if table.num_rows == 0:
        raise TableError(f"{what} has no rows")
    for name in ("evs", "ds", "loss", "margin", "entropy", "prob_label", "ref_prob_label"):
        vals = table.column(name).to_numpy(zero_copy_only=False)
        vals = vals[~np.isnan(vals)] if name in ("ds", "ref_prob_label") else vals
        bad = ~np.isfinite(np.asarray(vals, dtype=np.float64))
        if bad.any():
            raise TableError(f"{what} column {name!r} has {int(bad.sum())} NaN or infinite values")
    ids = table.column("sample_id").to_numpy()
    epochs = table.column("epoch").to_numpy()
    key = np.stack([epochs.astype(np.int64), ids])
    if np.unique(key, axis=1).shape[1] != len(ids):
        raise TableError(f"{what} has duplicate sample_id values within one scoring round")
    return table


def validate_index(table: pa.Table, what: str = "index") -> pa.Table:
    """Check an index against the contract (``INDEX_SCHEMA``).

    Args:
        table: the index (rows of epoch, sample_id, weight).
        what: how the table is named in error messages.

    Returns:
        ``table`` conformed to ``INDEX_SCHEMA``.

    Raises:
        TableError: a contract column is missing or mistyped, a weight is negative or not
            finite, or a sample id repeats within one epoch.
    """
    table = conform(table, INDEX_SCHEMA, what)
    w = table.column("weight").to_numpy()
    if not np.isfinite(w).all() or (w < 0).any():
        raise TableError(f"{what} column 'weight' must be finite and >= 0")
    key = np.stack([table.column("epoch").to_numpy().astype(np.int64),
                    table.column("sample_id").to_numpy()])
    if np.unique(key, axis=1).shape[1] != table.num_rows:
        raise TableError(f"{what} lists a sample_id twice within one epoch")
    return table
