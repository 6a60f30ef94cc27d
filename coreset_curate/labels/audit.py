"""Noise audit: which samples look mislabeled, and which only trouble the quantized model.

    result = audit(["run/scores/epoch_000.parquet", ...], data=data)   # one or more rounds
    result.write("audit/")        # audit.parquet, report.html, summary.md

**Suspicion** (higher = more likely mislabeled) comes from the score rounds of the
quantized student. ``channel`` (the default when a round has the ``probs`` column, the
whole softmax): the posterior probability that the given label is wrong under the noise
the confident joint estimates, from the latest round's softmax (see
``_channel_suspicion``): a sample labeled i is suspected for its mass on the classes that
really are flipped to i, not for any doubt at all, which is what class-dependent noise
needs. Without ``probs`` the default is ``prob``: ``1 - mean(prob_label)`` over the rounds
(the area under the self-confidence curve: a mislabeled sample stays unlikely under its
given label through training, a hard one is learned); ``aum`` uses the mean margin
instead and ``evs`` the mean error vector score. One round works; more rounds add the
dynamics (the joint is averaged over them; ``prob_label_std`` and ``aum`` are in the
table either way).

**Flags** use thresholds estimated per class from the data, confident-learning style:
in each round the threshold of class j is the mean self-confidence of the samples labeled
j, and a sample labeled i counts towards the confident joint C[i, j] when the student
predicts j with probability at least class j's threshold. The off-diagonal share of row
i, scaled to class i's size, estimates how many of class i's labels are wrong; the
estimate is averaged over the rounds (a late round alone undercounts once the model has
begun to fit wrong labels), and that many samples of class i, the most suspicious first,
are flagged. No single global cut. The joint undercounts when wrong labels are predicted
with less confidence than right ones (they then fall out of the joint altogether);
``count="gap"`` makes a class the joint finds noisy flag at least the samples above the
cut that best splits its own suspicion in two (Otsu). That recovers the missed ones when
the split is clean and overshoots when it is not; on CIFAR-10 with symmetric and
asymmetric noise it lowered F1 every time (``benchmarks/noise_audit.py``), so the joint's
count alone is the default.

**Kind** of a flagged sample, from the full-precision reference's columns:
``mislabeled`` when the reference also disagrees with the given label (it predicts
another class, below its own threshold for the label), ``fragile`` when the reference
agrees with the label confidently (only the quantized model struggles), ``ambiguous``
otherwise, and ``unknown`` without a reference. A reference that memorised the noisy
labels calls mislabeled samples fragile, so it should not have been trained to 100%
training accuracy on the labels being audited.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pyarrow as pa

from ..common.checks import UnknownIds, align
from .counts import (channel_suspicion, flag_metrics, flags, mean_joint, otsu_counts,
                     per_class_mean)
from ..selection import aligned_column, load_rounds
from ..tasks import table_task
from .result import AUDIT_SCHEMA, KINDS, AuditResult
from ..common.tables import make_metadata, read_table, validate_index, with_metadata

__all__ = ["AUDIT_SCHEMA", "COUNTS", "KINDS", "SUSPICIONS", "AuditResult", "audit", "flag_metrics"]

COUNTS = ("confident_joint", "gap")
SUSPICIONS = ("auto", "channel", "prob", "aum", "evs")

_COLUMNS = ("evs", "ds", "margin", "pred", "prob_label", "max_prob", "ref_pred",
            "ref_prob_label")


def _latest_softmax(scores, ids: np.ndarray, k: int) -> tuple[np.ndarray | None, int | None]:
    """The ``probs`` column of the latest round that has one, aligned to ``ids``."""
    sources = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    best = None
    for src in sources:
        sr = load_rounds(src, ["probs"])
        for epoch, rnd in zip(sr.epochs, sr.rounds):
            if "probs" in rnd and (best is None or epoch >= best[0]):
                best = (epoch, rnd)
    if best is None:
        return None, None
    epoch, rnd = best
    p = rnd["probs"]
    if p.dtype == object:  # lists from a DataFrame
        try:
            p = np.stack([np.asarray(v, np.float64) for v in p])
        except (ValueError, TypeError) as err:
            raise ValueError(f"the probs column of epoch {epoch} is not one list of class "
                             f"probabilities per sample: {err}") from err
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or p.shape[1] < k:
        raise ValueError(f"the probs column of epoch {epoch} has {p.shape[-1]} classes; the "
                         f"labels need {k}")
    pos, present = align(rnd["sample_id"], ids)
    if not present.all():
        raise ValueError(f"the round of epoch {epoch} with probs does not cover every sample "
                         "of the latest round")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"the probs column of epoch {epoch} has NaN, infinite or negative "
                         "values")
    return p[pos], epoch


def _true_labels(true_labels, ids: np.ndarray, given: np.ndarray | None = None) -> np.ndarray:
    """True labels aligned to ``ids``: an array in id order, or a labels table whose ids
    cover the audited ones and whose ``label`` column is the ``given`` labels."""
    if isinstance(true_labels, (str, os.PathLike)):
        from .cleaning import read_labels_table

        table = read_labels_table(true_labels)
        if table.true_labels is None:
            raise ValueError(f"{true_labels} has no true_label column: true labels come from "
                             "a table of `coreset-curate noise` or a run with label_noise")
        pos, present = align(table.sample_ids, ids)
        if not present.all():
            raise UnknownIds(f"{true_labels} lacks {int((~present).sum())} of the audited "
                             f"sample ids, e.g. {ids[~present][:5].tolist()}: true labels of "
                             "another dataset?")
        if given is not None and not np.array_equal(table.labels[pos], given):
            n = int((table.labels[pos] != given).sum())
            raise ValueError(f"{true_labels}: {n} of its labels differ from those the scores "
                             "were made with: pass the labels table of the audited run")
        return table.true_labels[pos]
    arr = np.asarray(true_labels)
    if arr.shape != ids.shape:
        raise ValueError(f"true_labels has shape {arr.shape}; expected one label per audited "
                         f"sample ({len(ids)}, in sample_id order)")
    return arr.astype(np.int64)


def _class_names(data, class_names, ids: np.ndarray, labels: np.ndarray) -> list[str]:
    """The class names: the dataset's (whose ids must be the audited ones), those given, or
    the label numbers."""
    if data is not None:
        if len(data) != len(ids) or not np.array_equal(np.sort(data.sample_ids), ids):
            raise ValueError(f"data has {len(data)} samples but the last score round covers "
                             f"{len(ids)} other ids: audit the scores of this dataset")
        order = np.argsort(data.sample_ids, kind="stable")
        differ = int((data.labels.numpy()[order] != labels).sum())
        if differ:
            raise ValueError(f"{differ} of the dataset's labels differ from those the scores "
                             "were made with: read the dataset with the same labels table "
                             "(labels=, --labels)")
        class_names = list(data.class_names)
    k = int(labels.max()) + 1
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    if len(names) < k:
        raise ValueError(f"{len(names)} class names for labels up to {k - 1}")
    return names


def _reference_view(last: dict, labels: np.ndarray, pred: np.ndarray, flag: np.ndarray,
                    k: int):
    """The reference's view: the kind of every flagged sample and a suggested label; also
    the reference's predictions, probabilities and per-class thresholds (None without)."""
    ref_pred, ref_prob = last.get("ref_pred"), last.get("ref_prob_label")
    has_ref = (ref_pred is not None and ref_prob is not None
               and np.isfinite(np.asarray(ref_prob, np.float64)).all())
    kind = np.full(len(labels), None, dtype=object)
    suggested = np.where(pred != labels, pred, -1)
    if not has_ref:
        kind[flag] = "unknown"
        return kind, suggested, None, None, None
    ref_pred = np.asarray(ref_pred).astype(np.int64)
    ref_prob = np.asarray(ref_prob, np.float64)
    ref_thresholds = per_class_mean(ref_prob, labels, k)
    r_t = ref_thresholds[labels]
    kind_all = np.where((ref_pred != labels) & (ref_prob < r_t), "mislabeled",
                        np.where((ref_pred == labels) & (ref_prob >= r_t), "fragile",
                                 "ambiguous"))
    kind[flag] = kind_all[flag]
    suggested = np.where((suggested < 0) & (ref_pred != labels), ref_pred, suggested)
    return kind, suggested, ref_pred, ref_prob, ref_thresholds


def _audit_table(ids, labels, last, susp, flag, kind, suggested, p_mean, p_std, aum,
                 ref_pred, ref_prob, true_labels):
    """(table, metrics, true labels): the audit's rows (``AUDIT_SCHEMA``), and the flags'
    metrics against the true labels when those are known (else two Nones)."""
    cols = {
        "sample_id": ids, "suspicion": susp.astype(np.float32), "flag": flag,
        "kind": kind.tolist(), "given_label": labels,
        "suggested_label": pa.array(suggested, pa.int64(), mask=suggested < 0),
        "prob_label_mean": p_mean.astype(np.float32), "prob_label_std": p_std.astype(np.float32),
        "aum": aum.astype(np.float32), "evs": last["evs"].astype(np.float32),
        "ds": _nullable(last.get("ds"), pa.float32(), len(ids)),
        "ref_pred": _nullable(ref_pred, pa.int64(), len(ids)),
        "ref_prob_label": _nullable(ref_prob, pa.float32(), len(ids)),
    }
    metrics, true = None, None
    if true_labels is not None:
        true = _true_labels(true_labels, ids, labels)
        cols["true_label"] = true
        wrong = true != labels
        metrics = {"flag": flag_metrics(flag, susp, wrong),
                   "mislabeled_kind": flag_metrics(kind == "mislabeled", susp, wrong),
                   "true_noise_rate": float(wrong.mean())}
    else:
        cols["true_label"] = pa.nulls(len(ids), pa.int64())
    table = pa.table({f.name: pa.array(cols[f.name], f.type) if not isinstance(
        cols[f.name], pa.Array) else cols[f.name] for f in AUDIT_SCHEMA}, schema=AUDIT_SCHEMA)
    return table, metrics, true


def _suspicion(suspicion: str, scores, ids: np.ndarray, labels: np.ndarray, joint: np.ndarray,
               plain: dict[str, np.ndarray]) -> tuple[str, np.ndarray, int | None]:
    """(the suspicion used, ``"auto"`` resolved; every sample's suspicion; the epoch of the
    softmax the channel read, or None). ``plain``: the suspicions that need no softmax."""
    softmax, softmax_epoch = (None, None) if suspicion in plain else \
        _latest_softmax(scores, ids, len(joint))
    if suspicion == "channel" and softmax is None:
        raise ValueError("suspicion 'channel' needs the student's whole softmax: a score "
                         "round with the 'probs' column (score_dataset(probs=True), "
                         "coreset-curate score --probs; the trainer writes it up to "
                         "256 classes)")
    if suspicion == "auto":
        suspicion = "channel" if softmax is not None else "prob"
    if suspicion == "channel":
        return suspicion, channel_suspicion(softmax, labels, joint), softmax_epoch
    return suspicion, plain[suspicion], softmax_epoch


def audit(scores, *, data=None, class_names: Sequence[str] | None = None,
          suspicion: str = "auto", count: str = "confident_joint", true_labels=None,
          index=None) -> AuditResult:
    """Audit the labels of the samples in ``scores`` (see module doc).

    Args:
        scores: score tables (paths, pyarrow tables or DataFrames), one per scoring round
            or several rounds in one.
        data: the ``ImageData`` the scores came from (class names, thumbnails in the
            report; its length and ids must match).
        class_names: the class names, when ``data`` is not given (default: from the
            tables' metadata, else the label numbers).
        suspicion: ``"auto"``, ``"channel"``, ``"prob"``, ``"aum"`` or ``"evs"`` (module
            doc).
        count: how many to flag per class, ``"confident_joint"`` or ``"gap"``.
        true_labels: the real labels when the noise is known (an array in sample_id
            order, or a labels table from ``inject_noise`` / ``coreset-curate noise``);
            adds precision, recall, F1 and AUROC.
        index: a run's index (path or table); adds the flagged share of every epoch's
            subset.

    Returns:
        The ``AuditResult``; ``result.write(folder)`` writes the report.

    Raises:
        ValueError: an unknown ``suspicion`` or ``count``, scores of a task the audit does
            not read (``Task.audit_refusal``), a column the audit needs is missing,
            ``"channel"`` without the ``probs`` column, or ``data`` / ``true_labels`` /
            ``index`` that do not match the scores.
        TableError: a table breaks the score contract.
    """
    if suspicion not in SUSPICIONS:
        raise ValueError(f"suspicion must be one of {SUSPICIONS}; got {suspicion!r}")
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}; got {count!r}")
    sr = load_rounds(scores, _COLUMNS)
    rounds, last = sr.rounds, sr.rounds[-1]
    for name in sr.tasks:  # a task whose tables the audit cannot read says why
        refusal = table_task({"task": name}).audit_refusal
        if refusal:
            raise ValueError(refusal)
    for c in ("prob_label", "pred", "margin", "evs"):
        if c not in last:
            raise ValueError(f"the score tables lack column {c!r}, which the audit needs")
    ids = last["sample_id"].astype(np.int64)
    labels = last["label"].astype(np.int64)
    names = _class_names(data, class_names, ids, labels)
    k = len(names)

    prob = aligned_column(rounds, ids, "prob_label")
    p_mean = np.nanmean(prob, axis=0)
    p_std = np.nanstd(prob, axis=0)
    aum = np.nanmean(aligned_column(rounds, ids, "margin"), axis=0)
    evs_mean = np.nanmean(aligned_column(rounds, ids, "evs"), axis=0)
    counts = np.bincount(labels, minlength=k)
    joint = mean_joint(rounds, counts, k)
    suspicion, susp, softmax_epoch = _suspicion(suspicion, scores, ids, labels, joint, {
        "prob": 1.0 - p_mean, "aum": -aum, "evs": evs_mean})
    thresholds = per_class_mean(last["prob_label"].astype(np.float64), labels, k)
    n_flag = np.rint(joint.sum(1) - np.diag(joint)).astype(np.int64).clip(0, counts)
    if count == "gap":  # where the joint finds noise, also take the gap in the suspicion
        gap = np.minimum(otsu_counts(susp, labels, k), counts // 2)
        n_flag = np.where(n_flag > 0, np.maximum(n_flag, gap), 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        noise_rates = np.where(counts > 0, n_flag / np.maximum(counts, 1), 0.0)
    pred = last["pred"].astype(np.int64)
    flag = flags(susp, labels, n_flag)

    kind, suggested, ref_pred, ref_prob, ref_thresholds = _reference_view(last, labels, pred,
                                                                          flag, k)

    table, metrics, true = _audit_table(ids, labels, last, susp, flag, kind, suggested,
                                        p_mean, p_std, aum, ref_pred, ref_prob, true_labels)
    shares = (_subset_shares(index, ids, flag, kind, true, labels) if index is not None
              else None)
    table = with_metadata(table, make_metadata(
        kind="audit", suspicion=suspicion, epochs=sr.epochs, sources=sr.sources,
        softmax_epoch=softmax_epoch if suspicion == "channel" else None,
        fingerprint=sr.fingerprint, class_names=names,
        thresholds=_floats(thresholds), noise_rates=_floats(noise_rates),
        ref_thresholds=_floats(ref_thresholds) if ref_thresholds is not None else None,
        metrics=metrics))
    return AuditResult(table=table, class_names=names, epochs=sr.epochs,
                       thresholds=thresholds, ref_thresholds=ref_thresholds,
                       class_counts=counts, noise_rates=noise_rates, confident_joint=joint,
                       suspicion=suspicion, metrics=metrics, subset_share=shares,
                       sources=sr.sources, fingerprint=sr.fingerprint)


def _nullable(values, typ: pa.DataType, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, typ)
    v = np.asarray(values, np.float64)
    return pa.array(v, pa.float64(), mask=~np.isfinite(v)).cast(typ)


def _floats(a) -> list:
    return [None if not np.isfinite(x) else round(float(x), 6) for x in np.asarray(a, float)]


def _subset_shares(index, ids, flag, kind, true, labels) -> list[dict]:
    """For every epoch of a run's index: subset size, flagged and mislabeled-kind share,
    and (with true labels) the share of really noisy samples."""
    table = index if isinstance(index, pa.Table) else read_table(index)
    table = validate_index(table, "index" if isinstance(index, pa.Table) else str(index))
    epochs = np.asarray(table.column("epoch").to_numpy())
    sid = np.asarray(table.column("sample_id").to_numpy(), np.int64)
    pos, present = align(ids, sid)
    if not present.all():
        raise ValueError("the index names sample ids that the score tables do not have")
    mis = np.asarray([k == "mislabeled" for k in kind])
    wrong = None if true is None else (np.asarray(true) != labels)
    out = []
    for e in np.unique(epochs):
        p = pos[epochs == e]
        row = {"epoch": int(e), "size": int(len(p)), "flagged": float(flag[p].mean()),
               "mislabeled_kind": float(mis[p].mean())}
        if wrong is not None:
            row["truly_noisy"] = float(wrong[p].mean())
        out.append(row)
    return out
