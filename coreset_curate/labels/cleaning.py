"""An audit acted on: labels tables without (or relabeling) the flagged samples, and the
ids a selection excludes. The labels-table contract itself is ``data.labels``.

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
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..common.checks import align
from ..common.tables import read_table, table_metadata
from ..data.labels import LABELS_FIELDS, Labels, apply_labels, label_rows, read_labels_table

# the labels-table contract lives in data.labels; re-exported here beside what acts on it
__all__ = ["Labels", "read_labels_table", "apply_labels", "label_rows", "restrict_rounds",
           "clean_labels", "exclusions", "CLEAN_KINDS", "LABELS_FIELDS"]

log = logging.getLogger(__name__)

# flag kinds that clean and exclusions act on by default: mislabeled, and the flags of an
# audit without a reference model, which cannot tell noise from quantization damage
# ("unknown"); fragile samples are kept (the labels are right, the quantized model is not)
CLEAN_KINDS = ("mislabeled", "unknown")


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
    ``sample_id`` column of any other table (path or pyarrow); or an array of ids.

    Args:
        source: an audit (folder, ``audit.parquet``, ``AuditResult``), a table with
            ``sample_id`` (path or pyarrow), an array of ids, or None (no exclusion).
        kinds: the flag kinds of an audit that are excluded.

    Returns:
        The ids, int64, sorted and unique.

    Raises:
        ValueError: a table without ``sample_id``, or ids that are not 1-D integers.
    """
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

    Args:
        audit: the audit (its folder, ``audit.parquet``, an ``AuditResult`` or the table).
        relabel: give flagged samples the audit's suggested label instead of leaving them
            out.
        kinds: the flag kinds acted on (default mislabeled and unknown).
        labels: the labels table the audited data was read with, or None.

    Returns:
        The ``Labels`` table (``write(path)`` saves it).

    Raises:
        ValueError: the audit is not an audit table, names an unknown kind, or does not
            fit ``labels``.
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
