"""The counting core of the noise audit: per-class thresholds, the calibrated confident
joint (how many samples of each given class look like each other class), which samples
to flag, and how well flags match known noise. Arrays in, arrays out."""

from __future__ import annotations

import numpy as np

__all__ = ["per_class_mean", "confident_joint", "mean_joint", "flags", "otsu_counts",
           "channel_suspicion", "flag_metrics"]


def per_class_mean(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """The mean of ``values`` over the samples of each class (non-finite values skipped).

    Args:
        values: one value per sample.
        labels: one class per sample, in ``0..k-1``.
        k: the number of classes.

    Returns:
        ``(k,)`` means; NaN for a class without finite values.
    """
    ok = np.isfinite(values)
    sums = np.bincount(labels[ok], weights=values[ok], minlength=k)
    counts = np.bincount(labels[ok], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def confident_joint(labels, pred, p_label, p_pred, thresholds, row_sizes) -> np.ndarray:
    """Confident joint C[given, confident class], row i scaled to sum to row_sizes[i].

    Args:
        labels: given labels.
        pred: the student's predicted classes.
        p_label: the student's probability of the given label.
        p_pred: its probability of the predicted class.
        thresholds: per-class thresholds (``per_class_mean`` of ``p_label``).
        row_sizes: the class sizes to calibrate the rows to.

    Returns:
        The ``(k, k)`` joint.
    """
    k = len(row_sizes)
    t_label = thresholds[labels]
    same = (pred == labels) & (p_label >= t_label)
    # (a NaN p_pred compares False; the +inf of tables without max_prob always counts)
    other = (pred != labels) & (p_pred >= thresholds[pred.clip(0, k - 1)])
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[same], labels[same]), 1.0)
    np.add.at(joint, (labels[other], pred[other]), 1.0)
    rows = joint.sum(1, keepdims=True)
    return np.where(rows > 0, joint / np.maximum(rows, 1) * row_sizes[:, None], 0.0)


def flags(suspicion: np.ndarray, labels: np.ndarray, n_flag: np.ndarray) -> np.ndarray:
    """In every class c, the n_flag[c] most suspicious samples (ties by sample order).

    Args:
        suspicion: one score per sample, higher is more suspicious.
        labels: given labels.
        n_flag: how many to flag in each class.

    Returns:
        A boolean mask of the flagged samples.
    """
    flag = np.zeros(len(labels), dtype=bool)
    order = np.lexsort((np.arange(len(labels)), -suspicion, labels))  # by class, then score
    starts = np.searchsorted(labels[order], np.arange(len(n_flag)))
    for c, start in enumerate(starts):
        if n_flag[c] > 0:
            flag[order[start : start + int(n_flag[c])]] = True
    return flag


def otsu_counts(suspicion: np.ndarray, labels: np.ndarray, k: int, bins: int = 256
                ) -> np.ndarray:
    """Per class, how many samples lie above the cut that best splits the class's
    suspicion into two groups (Otsu: the largest between-group variance).

    Args:
        suspicion: one score per sample.
        labels: given labels.
        k: the number of classes.
        bins: histogram bins per class.

    Returns:
        ``(k,)`` counts; 0 for a class whose suspicion does not vary.
    """
    out = np.zeros(k, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for c in range(k):  # one histogram per class
        v = suspicion[order[bounds[c] : bounds[c + 1]]]
        if len(v) < 2 or v.max() <= v.min():
            continue
        hist, edges = np.histogram(v, bins=bins)
        w0 = np.cumsum(hist)[:-1].astype(np.float64)
        w1 = len(v) - w0
        centers = (edges[:-1] + edges[1:]) / 2
        s0 = np.cumsum(hist * centers)[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            between = w0 * w1 * (s0 / w0 - (s0[-1] + hist[-1] * centers[-1] - s0) / w1) ** 2
        cut = int(np.nanargmax(np.where((w0 > 0) & (w1 > 0), between, -1.0)))
        out[c] = int((v > edges[cut + 1]).sum())
    return out


def channel_suspicion(softmax: np.ndarray, labels: np.ndarray, joint: np.ndarray
                       ) -> np.ndarray:
    """Posterior probability that the given label is wrong under the estimated noise.

    ``joint[i, j]`` counts samples labeled i whose true class is j, so column j
    normalised is T[i, j] = P(given i | true j). With the student's softmax as the prior
    over the true class, P(true = given | x, given) = p_i T[i, i] / sum_j p_j T[i, j].
    A sample labeled i is suspicious in proportion to its mass on classes that really
    are flipped to i: under class-dependent noise, a cat labeled dog is suspected more
    than a hard dog that looks a little like a ship.

    Args:
        softmax: ``(n, classes)`` the student's softmax.
        labels: given labels.
        joint: the calibrated confident joint (``mean_joint``).

    Returns:
        ``(n,)`` suspicion, in [0, 1].
    """
    n = len(labels)
    cols = joint.sum(0, keepdims=True)
    # (the inner wheres keep the denominators nonzero, so nothing divides by zero)
    flip = np.where(cols > 0, joint / np.where(cols > 0, cols, 1.0), 0.0)
    k = flip.shape[0]
    p = softmax[:, :k]
    rows = flip[labels]  # (n, k): P(given label of the row | true j)
    right = p[np.arange(n), labels] * rows[np.arange(n), labels]
    total = (p * rows).sum(1)
    post = np.where(total > 0, right / np.where(total > 0, total, 1.0), p[np.arange(n), labels])
    return 1.0 - post


def flag_metrics(flag: np.ndarray, suspicion: np.ndarray, noisy: np.ndarray) -> dict:
    """Precision, recall and F1 of ``flag`` and AUROC of ``suspicion`` against known noise.

    Args:
        flag: the flagged mask.
        suspicion: one score per sample.
        noisy: the mask of samples whose label is really wrong.

    Returns:
        ``{"precision", "recall", "f1", "auroc", "flagged", "noisy", "true_positives"}``;
        ``auroc`` is None when every sample or none is noisy.
    """
    from sklearn.metrics import roc_auc_score

    flag, noisy = np.asarray(flag, bool), np.asarray(noisy, bool)
    tp = int((flag & noisy).sum())
    precision = tp / flag.sum() if flag.any() else 0.0
    recall = tp / noisy.sum() if noisy.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auroc = (float(roc_auc_score(noisy, suspicion)) if 0 < noisy.sum() < len(noisy)
             else None)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "auroc": auroc, "flagged": int(flag.sum()), "noisy": int(noisy.sum()),
            "true_positives": tp}


def mean_joint(rounds: list[dict], counts: np.ndarray, k: int) -> np.ndarray:
    """Per-class thresholds and a calibrated confident joint for every round, averaged: a
    late round alone undercounts once the model starts to fit the wrong labels.

    Args:
        rounds: scoring rounds (``ScoreRounds.rounds``).
        counts: samples per given label in the audited round.
        k: the number of classes.

    Returns:
        The ``(k, k)`` mean joint.
    """
    joints = []
    for rnd in rounds:
        r_lab = rnd["label"].astype(np.int64)
        r_pred = rnd["pred"].astype(np.int64).clip(0, k - 1)
        r_p = rnd["prob_label"].astype(np.float64)
        t_r = np.nan_to_num(per_class_mean(r_p, r_lab, k), nan=1.0)
        if "max_prob" in rnd:
            p_pred = np.where(r_pred == r_lab, r_p, rnd["max_prob"].astype(np.float64))
        else:  # tables without max_prob: any disagreement counts as confident
            p_pred = np.where(r_pred == r_lab, r_p, np.inf)
        # scaled to the audited class sizes, also for a round that covers only part
        joints.append(confident_joint(r_lab, r_pred, r_p, p_pred, t_r,
                                       counts.astype(np.float64)))
    return np.mean(joints, axis=0)
