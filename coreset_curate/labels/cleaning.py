"""Labels tables: a dataset's labels replaced by one's own, and an audit acted on.

A labels table is Parquet with ``sample_id`` and ``label`` (int64) and, where the truth is
known (injected noise), ``true_label``; the ``noise`` command writes one, and so does
``clean``, which acts on an audit::

    cleaned = clean_labels("audit/", relabel=False)   # flagged mislabeled samples dropped
    cleaned.write("clean.parquet")
    train = load_data("cifar10", "train", labels="clean.parquet")

Wherever a dataset is read (``load_data(..., labels=)``, the ``score``, ``select``,
``audit``, ``export`` and ``clean`` commands, the ``labels`` recipe key) the table's labels
replace the dataset's, and the fingerprint follows the labels used. A table must name only
ids of the dataset, and every one of them, unless it records that it leaves samples out on
purpose (``dropped`` in its metadata, as ``clean`` writes; ``missing="drop"`` accepts any
table that leaves some out): then the dataset is the rows the table keeps.

``exclusions(source)`` reads the ids an audit flags (or any table's ``sample_id``): the
list a selection never spends its budget on (``select(..., exclude=)``, ``--exclude``).
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

__all__ = ["Labels", "read_labels_table", "apply_labels", "label_rows", "restrict_rounds", "clean_labels", "exclusions",
           "CLEAN_KINDS", "LABELS_FIELDS"]

log = logging.getLogger(__name__)

LABELS_FIELDS = (pa.field("sample_id", pa.int64(), nullable=False),
                 pa.field("label", pa.int64(), nullable=False),
                 pa.field("true_label", pa.int64(), nullable=False))
# flag kinds that clean and exclusions act on by default: mislabeled, and the flags of an
# audit without a reference model, which cannot tell noise from quantization damage
# ("unknown"); fragile samples are kept (the labels are right, the quantized model is not)
CLEAN_KINDS = ("mislabeled", "unknown")


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
    from ..data.memory import FingerprintMismatch

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


def _audit_table(audit) -> tuple[pa.Table, str]:
    """The rows of an audit: an ``AuditResult``, its folder, its ``audit.parquet`` or the
    table itself."""
    if hasattr(audit, "table") and isinstance(audit.table, pa.Table):
        return audit.table, "audit"
    if isinstance(audit, pa.Table):
        return audit, "audit table"
    path = Path(audit)
    if path.is_dir():
        path = path / "audit.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no audit at {audit}: expected an audit folder (coreset-curate "
                                "audit --out) or its audit.parquet")
    return read_table(path), str(path)


def _flagged(table: pa.Table, name: str, kinds) -> np.ndarray:
    need = [c for c in ("sample_id", "flag", "kind") if c not in table.column_names]
    if need:
        raise ValueError(f"{name} is not an audit table: it lacks {need}")
    unknown = sorted(set(kinds) - {"mislabeled", "fragile", "ambiguous", "unknown"})
    if unknown:
        raise ValueError(f"unknown flag kind(s) {unknown}; kinds are mislabeled, fragile, "
                         "ambiguous and unknown")
    flag = np.asarray(table.column("flag").to_numpy(zero_copy_only=False), bool)
    kind = np.asarray(table.column("kind").to_pylist(), dtype=object)
    return flag & np.isin(kind, list(kinds))


def exclusions(source, *, kinds=CLEAN_KINDS) -> np.ndarray:
    """Sample ids (ascending) to keep out of every selection: the samples an audit (its
    folder, ``audit.parquet``, an ``AuditResult``) flags with one of ``kinds``; the
    ``sample_id`` column of any other table (path or pyarrow); or an array of ids."""
    if source is None:
        return np.zeros(0, np.int64)
    if isinstance(source, (str, os.PathLike, pa.Table)) or hasattr(source, "table"):
        if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
            table, name = read_table(source), str(source)
        else:
            table, name = _audit_table(source)
        if "sample_id" not in table.column_names:
            raise ValueError(f"{name}: an exclusion list needs a sample_id column (or an "
                             f"audit's flags); it has {table.column_names}")
        ids = np.asarray(table.column("sample_id").to_numpy(), np.int64)
        if "flag" in table.column_names:
            ids = ids[_flagged(table, name, kinds)]
        return np.unique(ids)
    ids = np.asarray(source)
    if ids.ndim != 1 or (len(ids) and ids.dtype.kind not in "iu"):
        raise ValueError("exclude must be an audit, a table with sample_id or a 1-D array "
                         "of integer sample ids")
    return np.unique(ids.astype(np.int64))


def clean_labels(audit, *, relabel: bool = False, kinds=CLEAN_KINDS, labels=None) -> Labels:
    """A labels table that acts on an audit: the samples it flags with one of ``kinds``
    are left out, or with ``relabel=True`` given their ``suggested_label`` (left out where
    the audit suggests none). Every other sample keeps the label the audit saw.

    ``labels``: the labels table the audited data was read with (for example a run's
    ``labels.parquet``): its ``true_label`` column is carried over, and samples it already
    left out stay out. The audit's own ``true_label`` column is used when it has one.
    """
    table, name = _audit_table(audit)
    bad = _flagged(table, name, kinds)
    if "given_label" not in table.column_names:
        raise ValueError(f"{name} is not an audit table: it lacks 'given_label'")
    ids = np.asarray(table.column("sample_id").to_numpy(), np.int64)
    given = np.asarray(table.column("given_label").to_numpy(), np.int64)
    new = given.copy()
    keep = ~bad
    relabeled = 0
    if relabel:
        sug = table.column("suggested_label")
        has = ~np.asarray(sug.is_null().to_numpy(zero_copy_only=False), bool)
        values = np.asarray(sug.fill_null(-1).to_numpy(), np.int64)
        fix = bad & has
        new[fix] = values[fix]
        keep = ~bad | fix
        relabeled = int(fix.sum())
    true = None
    if "true_label" in table.column_names and table.column("true_label").null_count == 0:
        true = np.asarray(table.column("true_label").to_numpy(), np.int64)
    meta = table_metadata(table)
    source_fp, before = meta.get("fingerprint"), 0
    if labels is not None:
        prior = read_labels_table(labels)
        pos, present = align(prior.sample_ids, ids)
        if not present.all() or len(prior) != len(ids):
            raise ValueError(f"{prior.source} labels {len(prior)} samples but the audit covers "
                             f"{len(ids)}, {int((~present).sum())} of them not in the table: "
                             "pass the labels table the audited scores were made with")
        if not np.array_equal(prior.labels[pos], given):
            raise ValueError(f"{prior.source} has other labels than the audit saw: pass the "
                             "labels table the audited scores were made with")
        if prior.true_labels is not None and true is None:
            true = prior.true_labels[pos]
        before = prior.dropped
        source_fp = prior.metadata.get("source_fingerprint") or prior.metadata.get(
            "fingerprint", source_fp)
    mode = "relabel" if relabel else "exclude"
    out = Labels(ids[keep], new[keep], None if true is None else true[keep], {
        "cleaning": mode, "audit": name, "kinds": list(kinds), "flagged": int(bad.sum()),
        "relabeled": relabeled, "dropped": before + int((~keep).sum()),
        "source_fingerprint": source_fp}, source=f"cleaned labels from {name}")
    log.info("%s: %d flagged (%s): %d relabeled, %d left out", name, int(bad.sum()),
             "/".join(kinds), relabeled, int((~keep).sum()))
    return out


def restrict_rounds(rounds, labels):
    """Scoring rounds (``ScoreRounds``) of a dataset read with a labels table: the rows it
    leaves out dropped. The labels it keeps must be those the scores were made with (a
    relabeled table needs new scores: ``score --labels``)."""
    from dataclasses import replace

    from ..data.memory import fingerprint as fingerprint_of

    last = rounds.rounds[-1]
    ids, given = last["sample_id"], last["label"].astype(np.int64)
    table = read_labels_table(labels)
    k = int(max(given.max(initial=0), table.labels.max(initial=0))) + 1
    keep, new = label_rows(ids, k, table, fingerprint=rounds.fingerprint,
                           where="on the score tables")
    differ = int((new != given[keep]).sum())
    if differ:
        raise ValueError(f"{table.source}: {differ} of its labels differ from those the scores "
                         "were made with: score the data with these labels first "
                         "(coreset-curate score --labels)")
    kept_ids = ids[keep]
    out = []
    for r in rounds.rounds:
        mask = np.isin(r["sample_id"], kept_ids)
        out.append({c: v[mask] for c, v in r.items()})
    split = (rounds.fingerprint or {}).get("split", "train")
    return replace(rounds, rounds=out, fingerprint=fingerprint_of(new, split, kept_ids))
