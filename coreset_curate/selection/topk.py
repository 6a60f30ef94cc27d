"""The per-class top-k every selection method shares: the class budgets (``class_budget``)
and the mask of the highest-scoring rows within them (``top_fraction``), ties to the
smaller ``sample_id``."""

from __future__ import annotations

import math

import numpy as np

from .rounds import small_ints

__all__ = ["class_budget", "top_fraction"]


def class_budget(counts: np.ndarray, fraction: float, min_per_class: int = 0) -> np.ndarray:
    """Samples kept per class: floor(fraction * n_c + 0.5), at least ``min_per_class``
    (where the class has that many), never more than the class has.

    Args:
        counts: rows per class.
        fraction: share to keep.
        min_per_class: the smallest budget.

    Returns:
        The budget of every class (int64).
    """
    counts = np.asarray(counts, dtype=np.int64)
    k = np.floor(fraction * counts + 0.5).astype(np.int64)
    k = np.maximum(k, np.minimum(min_per_class, counts))
    return np.minimum(k, counts)


def _read_only_view(a: np.ndarray):
    """A zero-copy tensor over ``a``, which may be a read-only Arrow buffer. Only for reads:
    the callers gather from it into new tensors and never write into it."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def top_fraction(score: np.ndarray, labels: np.ndarray, fraction: float, *,
                 per_class: bool = True, min_per_class: int = 0,
                 full_counts: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the highest-scoring rows, per class or overall.

    ``full_counts`` (rows per class, indexed by label, before some were excluded): the
    budgets are those of the whole data, capped by the rows left.

    Rows must be sorted by sample_id: ties go to the earlier row. One radix sort groups the
    rows by class; in each class a linear-time partition finds the k-th largest score, and
    the rows above it plus the first rows equal to it are kept. The loop runs over classes,
    never over samples.

    Args:
        score: one score per row (rows sorted by sample_id).
        labels: one class per row (non-negative integers).
        fraction: share to keep.
        per_class: keep the fraction of every class (True) or of all rows.
        min_per_class: the smallest per-class budget.
        full_counts: rows per class before an exclusion, or None.

    Returns:
        A boolean mask over the rows.
    """
    import torch  # multi-threaded sort, gather and scatter on zero-copy views

    score = np.ascontiguousarray(score)
    n = len(score)
    if per_class:
        # stable sort of small integers is a radix sort: rows grouped by class, row order kept
        lab_t, order_t = torch.sort(torch.from_numpy(small_ints(np.asarray(labels))),
                                    stable=True)
        lab_g = lab_t.numpy()
        s_g = _read_only_view(score).index_select(0, order_t).numpy()
        counts = np.diff(np.searchsorted(lab_g, np.arange(int(lab_g[-1]) + 2,
                                                          dtype=lab_g.dtype)))
        del lab_t, lab_g
        budget = class_budget(counts if full_counts is None else full_counts[:len(counts)],
                              fraction, min_per_class)
        budget = np.minimum(budget, counts)
    else:
        order_t, s_g = None, score
        counts = np.array([n])
        whole = n if full_counts is None else int(np.sum(full_counts))
        budget = np.array([min(n, max(int(math.floor(fraction * whole + 0.5)),
                                      min_per_class))])
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
