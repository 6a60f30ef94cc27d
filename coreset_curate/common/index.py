"""The index contract: the subset of every epoch of a run, as (epoch, sample_id, weight).

``index_table`` builds one from selections, ``read_index`` reads and validates one,
``epoch_rows`` takes one epoch out of it and ``add_to_index`` adds epochs to an index file.
Adding is safe with several writers: the read, merge and write happen under an exclusive
lock on the folder that holds it, so no writer's epochs are ever lost.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from .tables import (INDEX_SCHEMA, conform, make_metadata, read_table, table_metadata,
                     validate_index, with_metadata, write_table)

__all__ = ["read_index", "epoch_rows", "index_table", "merge_index", "add_to_index",
           "index_lock"]


def read_index(index: str | os.PathLike | pa.Table) -> pa.Table:
    """An index from a path or a table, checked against the index contract.

    Args:
        index: a Parquet path or an Arrow table.

    Returns:
        The index, conformed to ``INDEX_SCHEMA``.

    Raises:
        FileNotFoundError: no file at the path.
        TableError: the file is not Parquet, or it breaks the index contract.
    """
    table = index if isinstance(index, pa.Table) else read_table(index)
    return validate_index(table, "index" if isinstance(index, pa.Table) else str(index))


def index_epochs(index: pa.Table) -> set[int]:
    return set(np.unique(index.column("epoch").to_numpy()).tolist())


def epoch_rows(index: pa.Table, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's subset of an index.

    Args:
        index: an index table.
        epoch: the epoch.

    Returns:
        ``(sample_ids ascending, weights)``.

    Raises:
        ValueError: the index has no rows for ``epoch``.
    """
    epochs = index.column("epoch").to_numpy()
    rows = np.flatnonzero(epochs == epoch)
    if len(rows) == 0:
        have = sorted(set(epochs.tolist()))
        raise ValueError(f"epoch {epoch} is not in the index; it has epochs "
                         f"{have[:20]}{' ...' if len(have) > 20 else ''}")
    ids = index.column("sample_id").to_numpy()[rows]
    weights = index.column("weight").to_numpy()[rows]
    order = np.argsort(ids, kind="stable")
    return ids[order], weights[order]


def index_table(selections: dict, *, metadata: dict | None = None) -> pa.Table:
    """Index rows (epoch, sample_id, weight) for ``{epoch: Selection}``.

    No creation time goes into the metadata, so the same selections give a byte-identical
    index.

    Args:
        selections: ``{epoch: Selection}``.
        metadata: the index metadata (method, fraction, fingerprint, sources, ...).

    Returns:
        The index table, sorted by epoch then sample_id.
    """
    parts = [(np.full(len(s), e, dtype=np.int32), s.sample_ids, s.weights)
             for e, s in sorted(selections.items())]
    cols = [np.concatenate([p[i] for p in parts]) if parts else np.array([], dtype=dt)
            for i, dt in enumerate((np.int32, np.int64, np.float32))]
    table = pa.table(dict(zip(INDEX_SCHEMA.names, cols)), schema=INDEX_SCHEMA)
    # no creation time: the same scores, method and seed give a byte-identical index
    meta = {k: v for k, v in make_metadata(**(metadata or {})).items() if k != "created"}
    return with_metadata(table, meta)


def merge_index(existing: pa.Table, new: pa.Table) -> pa.Table:
    """``existing`` with the epochs in ``new`` replaced by ``new``'s rows.

    Args:
        existing: the index so far.
        new: the epochs to add or replace.

    Returns:
        The merged index, sorted by epoch then sample_id, with ``new``'s metadata and
        the ``sources`` of both.

    Raises:
        ValueError: the two were made with another method, fraction or dataset.
    """
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


@contextmanager
def index_lock(path: str | os.PathLike):
    """Hold an exclusive lock for changing the index file ``path``: ``fcntl.flock`` on the
    folder that holds it, so no lock file is left behind. Writers on one machine wait for
    each other; a lock on a network file system is only as good as its ``flock``.

    Args:
        path: the index file (its folder is created if missing).

    Yields:
        Nothing; the lock is held inside the ``with`` block.
    """
    import fcntl

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def add_to_index(path: str | os.PathLike, selection, epochs: Sequence[int], *,
                 metadata: dict | None = None, replace: bool = False) -> pa.Table:
    """Write ``selection`` as the subset of ``epochs`` into the index file ``path``: a new
    index, or the existing one extended (its other epochs kept). Epochs it already has are
    replaced only with ``replace=True``. Read, merge and write run under ``index_lock``, and
    the write is atomic.

    Args:
        path: the index file.
        selection: a ``Selection``.
        epochs: the epochs it is the subset of.
        metadata: the index metadata.
        replace: replace epochs the index already has.

    Returns:
        The index as written.

    Raises:
        FileExistsError: the index already has one of ``epochs`` and ``replace`` is
            False.
        ValueError: the existing index was made with another method, fraction or
            dataset.
        TableError: the existing file is not a valid index.
    """
    new = index_table({e: selection for e in epochs}, metadata=metadata)
    with index_lock(path):
        if os.path.exists(path):
            existing = read_index(path)
            clash = sorted(index_epochs(existing) & set(epochs))
            if clash and not replace:
                raise FileExistsError(f"{path} already has epoch(s) {clash}; pass --overwrite "
                                      "to replace them")
            new = merge_index(existing, new)
        write_table(new, path, overwrite=True)
    return new
