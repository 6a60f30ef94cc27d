"""The per-class top-k every selection method shares: the class budgets (``class_budget``)
and the mask of the highest-scoring rows within them (``top_fraction``), ties to the
smaller ``sample_id``; and the same top-k over rows that arrive batch by batch (``TopK``,
for tables read out of core)."""

from __future__ import annotations

import math

import numpy as np

from .rounds import small_ints

__all__ = ["TopK", "class_budget", "top_fraction"]


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


class TopK:
    """The ``budget[g]`` best rows of every group among those added so far: highest score,
    then the smaller id (rows must come in id order).

    A row that cannot beat its group's current k-th best is dropped at once; the rest wait
    in a pending list, which is flushed into each group's kept rows whenever it passes
    ``max(4 batches, half the total budget)`` rows: a group's rows are merged and cut back
    to k by a linear-time partition (no sort of the whole buffer). Memory is the kept rows
    (16 bytes each, plus the extras), the pending ones and one group's merge at a time.
    """

    def __init__(self, budget: np.ndarray, batch_rows: int) -> None:
        self.budget = np.asarray(budget, dtype=np.int64)
        # a row enters while its group has fewer than k rows, then only if it beats the k-th
        self.open = self.budget > 0
        self.thr = np.full(len(self.budget), np.inf)
        self.flush_rows = max(4 * int(batch_rows), int(self.budget.sum()) // 2)
        self.pending: list[list[np.ndarray]] = []
        self.pending_rows = 0
        self.kept: dict[int, list[np.ndarray]] = {}  # group -> [ids, scores, *extra]
        # int16 where it fits: numpy's stable sort of 16-bit integers is a radix sort
        self.group_type = np.int16 if len(self.budget) <= 2**15 else np.int64
        self.extras = 0

    def add(self, ids: np.ndarray, group: np.ndarray, score: np.ndarray, *extra) -> None:
        """Offer rows (``extra``: arrays kept alongside, one value a row)."""
        self.extras = len(extra)
        enter = self.open[group] | (score > self.thr[group])
        count = int(np.count_nonzero(enter))
        if not count:
            return
        self.pending.append([ids[enter], group[enter].astype(self.group_type), score[enter],
                             *(e[enter] for e in extra)])
        self.pending_rows += count
        if self.pending_rows > self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        parts = [np.concatenate(cols) for cols in zip(*self.pending)]
        self.pending, self.pending_rows = [], 0
        group = parts.pop(1)
        order = np.argsort(group, kind="stable")  # by group, id order kept within one
        per = np.bincount(group, minlength=len(self.budget))
        del group
        stops = np.cumsum(per)
        for g in np.flatnonzero(per):
            rows = order[stops[g] - per[g]: stops[g]]
            new = [a[rows] for a in parts]
            old = self.kept.get(int(g))
            merged = new if old is None else [np.concatenate(pair) for pair in zip(old, new)]
            self.kept[int(g)] = self._cut(int(g), merged)

    def _cut(self, g: int, cols: list[np.ndarray]) -> list[np.ndarray]:
        """Group ``g``'s best ``budget[g]`` of ``cols`` (in id order), its threshold set once
        it has that many."""
        k, score = int(self.budget[g]), cols[1]
        n = len(score)
        if n < k:
            return cols
        kth = np.partition(score, n - k)[n - k]  # the k-th largest score
        self.thr[g], self.open[g] = kth, False
        if n == k:
            return cols
        keep = score > kth
        ties = np.flatnonzero(score == kth)[: k - int(np.count_nonzero(keep))]
        keep[ties] = True  # the first rows equal to it: the smaller ids
        return [a[keep] for a in cols]

    def result(self) -> list[np.ndarray]:
        """``[ids, groups, scores, *extra]`` of the rows kept, in id order."""
        self._flush()
        groups = sorted(self.kept)
        if not groups:
            return [np.zeros(0, np.int64), np.zeros(0, np.int64),
                    *(np.zeros(0) for _ in range(1 + self.extras))]
        cols = [np.concatenate(c) for c in zip(*(self.kept[g] for g in groups))]
        sizes = [len(self.kept[g][0]) for g in groups]
        self.kept = {}
        group = np.repeat(np.asarray(groups, dtype=np.int64), sizes)
        order = np.argsort(cols[0], kind="stable")
        ids, score, *extra = (a[order] for a in cols)
        return [ids, group[order], score, *extra]

    def result_ids(self) -> np.ndarray:
        """The ids of the rows kept, in order (``result()[0]`` without the other columns)."""
        self._flush()
        ids = np.concatenate([self.kept[g][0] for g in sorted(self.kept)] or
                             [np.zeros(0, np.int64)])
        self.kept = {}
        ids.sort()
        return ids
