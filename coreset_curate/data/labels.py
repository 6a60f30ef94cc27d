"""Labels tables: a dataset's labels replaced by one's own.

A labels table is Parquet with ``sample_id`` and ``label`` (int64) and, where the truth is
known (injected noise), ``true_label``; the ``noise`` command writes one, and so does
``clean`` (``labels.cleaning``), which acts on an audit. Wherever a dataset is read
(``load_data(..., labels=)``, the ``score``, ``select``, ``audit``, ``export`` and ``clean``
commands, the ``labels`` recipe key) the table's labels replace the dataset's, and the
fingerprint follows the labels used. A table must name only ids of the dataset, and every
one of them, unless it records that it leaves samples out on purpose (``dropped`` in its
metadata, as ``clean`` writes; ``missing="drop"`` accepts any table that leaves some out):
then the dataset is the rows the table keeps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..common.checks import InputTypeError, UnknownIds, align
from ..common.tables import make_metadata, read_table, table_metadata, with_metadata, write_table
from ..common.fingerprint import FingerprintMismatch

__all__ = ["Labels", "read_labels_table", "apply_labels", "label_rows", "LABELS_FIELDS"]

log = logging.getLogger(__name__)

LABELS_FIELDS = (pa.field("sample_id", pa.int64(), nullable=False),
                 pa.field("label", pa.int64(), nullable=False),
                 pa.field("true_label", pa.int64(), nullable=False))


@dataclass
class Labels:
    """One labels table in memory, rows in ascending ``sample_id``."""

    sample_ids: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    source: str = "labels table"

    def __post_init__(self) -> None:
        ids = np.asarray(self.sample_ids, dtype=np.int64)
        labels = np.asarray(self.labels, dtype=np.int64)
        true = None if self.true_labels is None else np.asarray(self.true_labels, np.int64)
        if labels.shape != ids.shape or (true is not None and true.shape != ids.shape):
            raise ValueError(f"{self.source}: sample_id, label and true_label must have the "
                             "same length")
        order = np.argsort(ids, kind="stable")
        ids, labels = ids[order], labels[order]
        true = None if true is None else true[order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            dup = ids[1:][ids[1:] == ids[:-1]]
            raise ValueError(f"{self.source}: duplicate sample_id values, e.g. "
                             f"{dup[:5].tolist()}")
        for name, values in (("label", labels), ("true_label", true)):
            if values is not None and len(values) and values.min() < 0:
                raise ValueError(f"{self.source}: {name} must be non-negative class "
                                 f"indices; found {int(values.min())}")
        self.sample_ids, self.labels, self.true_labels = ids, labels, true

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def dropped(self) -> int:
        """Samples of the source dataset this table leaves out on purpose."""
        return int(self.metadata.get("dropped") or 0)

    def table(self) -> pa.Table:
        cols = [pa.array(self.sample_ids, pa.int64()), pa.array(self.labels, pa.int64())]
        fields = list(LABELS_FIELDS[:2])
        if self.true_labels is not None:
            cols.append(pa.array(self.true_labels, pa.int64()))
            fields.append(LABELS_FIELDS[2])
        table = pa.table(cols, schema=pa.schema(fields))
        meta = {k: v for k, v in self.metadata.items()
                if k not in ("created", "package_version")}
        return with_metadata(table, make_metadata(**{"kind": "labels", **meta}))

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the table (to a temporary file, then renamed)."""
        return write_table(self.table(), path, overwrite=overwrite)


def read_labels_table(source) -> Labels:
    """A ``Labels`` from a path, a pyarrow table or a ``Labels``; refuses tables without
    ``sample_id`` and ``label``, with missing values or duplicate ids."""
    if isinstance(source, Labels):
        return source
    name = str(source) if isinstance(source, (str, os.PathLike)) else "labels table"
    table = read_table(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(table, pa.Table):
        raise InputTypeError(f"labels must be a labels table (path, pyarrow.Table or Labels); got "
                             f"{type(source).__name__}")
    missing = [c for c in ("sample_id", "label") if c not in table.column_names]
    if missing:
        raise ValueError(f"{name} is not a labels table: it lacks {missing} (it has "
                         f"{table.column_names}; a labels table holds sample_id, label and "
                         "optionally true_label)")
    names = [c for c in ("sample_id", "label", "true_label") if c in table.column_names]
    for c in names:
        col = table.column(c)
        if col.null_count:
            raise ValueError(f"{name}: column {c!r} has {col.null_count} missing values")
        if not pa.types.is_integer(col.type):
            raise ValueError(f"{name}: column {c!r} must hold integers; it is {col.type}")
    arrays = {c: np.asarray(table.column(c).to_numpy(), np.int64) for c in names}
    return Labels(arrays["sample_id"], arrays["label"], arrays.get("true_label"),
                  table_metadata(table), name)


def apply_labels(data, labels, *, missing: str | None = None):
    """``data`` (a dataset of this toolkit) with the labels of a labels table.

    Ids of the table that the dataset lacks are refused (``UnknownIds``), and so are labels
    outside the dataset's classes. Rows the table leaves out are dropped when ``missing``
    is ``"drop"``, refused with ``"error"``; ``None`` drops them when the table records
    exactly that many ``dropped`` samples (tables from ``clean``) and refuses otherwise.
    The result's fingerprint is that of the rows and labels used.
    """
    keep, new = label_rows(data.sample_ids, data.num_classes, labels, fingerprint=data.fingerprint,
                           where=f"on dataset {data.name!r} split {data.split!r}",
                           missing=missing)
    if len(keep) < len(data):
        return data.subset(keep).with_labels(new)
    return data.with_labels(new)


def label_rows(sample_ids: np.ndarray, num_classes: int, labels, *, fingerprint: dict | None,
               where: str, missing: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row positions kept, ascending; their labels) for a dataset of ``sample_ids`` (in
    row order) read with a labels table: the checks of ``apply_labels``."""
    if missing not in (None, "drop", "error"):
        raise ValueError(f"missing must be None, 'drop' or 'error'; got {missing!r}")
    table = read_labels_table(labels)
    where = f"{table.source} {where}"
    sample_ids = np.asarray(sample_ids, np.int64)
    order = np.argsort(sample_ids, kind="stable")
    pos, present = align(sample_ids[order], table.sample_ids)
    if not present.all():
        bad = table.sample_ids[~present]
        raise UnknownIds(f"{where}: {len(bad)} of its {len(table)} sample ids are not in the "
                         f"dataset, e.g. {bad[:5].tolist()} (a labels table of another "
                         "dataset or split?)")
    left_out = len(sample_ids) - len(table)
    source_fp = table.metadata.get("source_fingerprint") or table.metadata.get("fingerprint")
    if left_out and isinstance(source_fp, dict) and fingerprint:
        # (a table naming exactly the dataset's ids fits it, whatever it was made from)
        for key in ("length", "ids_sha256"):
            if key in source_fp and key in fingerprint and source_fp[key] != fingerprint[key]:
                raise FingerprintMismatch(
                    f"{where}: the table was made from another dataset (its {key} is "
                    f"{source_fp[key]!r}, the dataset's {fingerprint[key]!r})")
    if len(table) and table.labels.max() >= num_classes:
        raise ValueError(f"{where}: labels go up to {int(table.labels.max())} but the dataset "
                         f"has {num_classes} classes")
    rows = order[pos]  # dataset row of each table row
    new = np.full(len(sample_ids), -1, np.int64)
    new[rows] = table.labels
    if not left_out:
        return np.arange(len(sample_ids)), new
    mode = missing or ("drop" if table.dropped == left_out else "error")
    if mode == "error":
        said = f" (it records {table.dropped} dropped)" if table.dropped else ""
        raise ValueError(f"{where}: the table labels {len(table)} of the dataset's "
                         f"{len(sample_ids)} samples{said}; a table that leaves samples out "
                         "on purpose records how many in its metadata (`coreset-curate "
                         "clean` writes one), or pass missing='drop'")
    keep = np.sort(rows)
    log.info("%s: %d samples left out, %d kept", where, left_out, len(keep))
    return keep, new[keep]
