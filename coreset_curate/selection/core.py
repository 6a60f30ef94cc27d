"""The selection primitives: the registry of methods (``schedules`` holds ACS's), ``Selection``,
``SelectionContext``, the class budgets and the per-class top-k that every method shares.

``entry.select(scores, "acs", fraction=0.1, epoch=t, epochs=E)`` returns the sample ids
(and loss weights) to train on at epoch ``t``; ``index.index_table`` turns selections into
the index contract. Methods and schedules are registered by name (``common.registry``);
a new method is one decorated function of a ``SelectionContext``::

    @register_method("my_method", columns=("loss",))
    def my_method(ctx):
        return ctx.top(ctx.column("loss"))

Conventions, the same for every method:

* per class (default), keep ``floor(S * n_c + 0.5)`` samples of class c (``round`` with
  halves up), at least ``min_per_class`` of them where the class has that many (a class
  smaller than its budget gives all it has); ``per_class=False`` keeps
  ``floor(S * n + 0.5)`` overall;
* "highest score first"; ties go to the smaller ``sample_id``, so results never depend on
  row order;
* a method that reads scores uses the latest scoring round at or before ``epoch``
  (``forgetting`` reads every round up to it); ``random`` / ``random_epoch`` read only ids
  and labels.
"""


from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..common.checks import fraction as check_fraction, non_negative_int
from ..common.registry import Registry
# the schedules' names stay importable from here (``__all__``)
from .schedules import SCHEDULES, beta, list_schedules, register_schedule
from .topk import class_budget, top_fraction

log = logging.getLogger(__name__)

__all__ = ["SCHEDULES", "METHODS", "register_method", "register_schedule", "list_methods",
           "list_schedules", "beta", "Selection", "SelectionContext", "top_fraction",
           "class_budget"]


# ------------------------------------------------------------------ registries
@dataclass(frozen=True)
class MethodSpec:
    fn: Callable[[SelectionContext], Selection]
    columns: tuple[str, ...]
    options: dict[str, Any]
    exact_size: bool
    all_rounds: bool
    partial: bool = False  # reads rounds where some rows have no score yet (NaN)


METHODS: Registry = Registry("method", wrap=lambda fn, columns=(), options=None, exact_size=True,
                             all_rounds=False, partial=False: MethodSpec(
                                 fn, tuple(columns), dict(options or {}), exact_size, all_rounds,
                                 partial))


def register_method(name: str, *, columns: Sequence[str] = (), options: dict | None = None,
                    exact_size: bool = True, all_rounds: bool = False,
                    partial: bool = False) -> Callable:
    """Decorator that registers a selection method: ``fn(ctx: SelectionContext) -> Selection``.

    Args:
        name: the method's name (``select(..., method=name)``).
        columns: score columns it reads (besides sample_id, label, epoch).
        options: the method-specific options it accepts, with their defaults.
        exact_size: whether it returns exactly the class budget (False for methods that
            decide their own size).
        all_rounds: whether it reads every round up to the epoch rather than the latest.
        partial: whether it selects from rounds where some rows have no score yet (NaN;
            the training-step rounds of ``free_scores`` before every sample was trained
            on).

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: (when the decorator is applied) ``name`` is already registered.
    """
    return METHODS.register(name, columns=columns, options=options, exact_size=exact_size,
                            all_rounds=all_rounds, partial=partial)


def list_methods() -> list[str]:
    """Names of the registered selection methods.

    Returns:
        The names, sorted.
    """
    return METHODS.names()


# ------------------------------------------------------------------ results and context
@dataclass
class Selection:
    """Sample ids (ascending) and their loss weights: what a method returns.

    Args:
        sample_ids: the selected ids, in any order (sorted on construction).
        weights: one loss weight per id (default: all 1).

    Raises:
        ValueError: ``sample_ids`` and ``weights`` differ in length.
    """

    sample_ids: np.ndarray
    weights: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        ids = np.asarray(self.sample_ids, dtype=np.int64)
        w = (np.ones(len(ids), dtype=np.float32) if self.weights is None
             else np.asarray(self.weights, dtype=np.float32))
        if len(w) != len(ids):
            raise ValueError("sample_ids and weights must have the same length")
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            order = np.argsort(ids, kind="stable")
            ids, w = ids[order], w[order]
        self.sample_ids, self.weights = ids, w

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass
class SelectionContext:
    """What a method sees: the scoring round in use, the rounds before it and the request.

    Attributes:
        columns: the scoring round in use, as numpy arrays, rows sorted by sample_id.
        rounds: every round up to the epoch (the last one is ``columns``).
        fraction: the share of rows to keep.
        epoch: the epoch selected for.
        epochs: the run's epoch count, or None.
        schedule: the ACS schedule's name.
        seed: the seed; ``rng`` derives the draws from it.
        per_class: keep the fraction of every class (True) or of all rows.
        min_per_class: the smallest per-class budget.
        options: the method's options, defaults filled in.
        full_counts: rows per class before an exclusion list took some out (the budgets
            stay those of the whole data), or None.
    """

    columns: dict[str, np.ndarray]
    rounds: list[dict[str, np.ndarray]]
    fraction: float
    epoch: int
    epochs: int | None
    schedule: str
    seed: int
    per_class: bool
    min_per_class: int
    options: dict[str, Any] = field(default_factory=dict)
    # rows per class (indexed by label) before an exclusion list took some out: budgets
    # stay those of the whole data, so excluding samples never shrinks a subset
    full_counts: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        """The sample ids of the round in use (ascending)."""
        return self.columns["sample_id"]

    @property
    def labels(self) -> np.ndarray:
        """The classes rows are grouped by: the label column, shifted up by one where a
        task's table may hold -1 (``Task.min_label``: a group of its own)."""
        labels = self.columns["label"]
        return labels + 1 if len(labels) and labels.min() < 0 else labels

    def column(self, name: str) -> np.ndarray:
        """A score column of the round in use, checked to be there and complete.

        Args:
            name: the column.

        Returns:
            Its values, one per row.

        Raises:
            ValueError: the round lacks the column, or it has missing values.
        """
        if name not in self.columns:
            raise ValueError(f"this method needs score column {name!r}; the table has "
                             f"{sorted(self.columns)}")
        values = self.columns[name]
        if values.dtype.kind == "f" and np.isnan(values).any():
            hint = " (score with a reference model)" if name in ("ds", "ref_prob_label") else ""
            raise ValueError(f"score column {name!r} has missing values{hint}")
        return values

    def rng(self, per_epoch: bool) -> np.random.Generator:
        """A generator seeded by ``(seed, epoch)`` (``per_epoch``) or by ``seed`` alone.

        Args:
            per_epoch: a new draw every epoch (True) or the same every epoch.

        Returns:
            The generator.
        """
        key = [self.seed, self.epoch] if per_epoch else [self.seed]
        return np.random.default_rng(np.random.SeedSequence(key))

    def budget(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class budgets.

        Returns:
            ``(classes, samples to keep per class)``.
        """
        classes, counts = np.unique(self.labels, return_counts=True)
        if self.full_counts is None:
            return classes, class_budget(counts, self.fraction, self.min_per_class)
        full = class_budget(self.full_counts[classes], self.fraction, self.min_per_class)
        return classes, np.minimum(full, counts)

    def total_budget(self) -> int:
        """The number of rows to keep overall (selection with ``per_class=False``)."""
        n = len(self.ids)
        whole = n if self.full_counts is None else int(self.full_counts.sum())
        return min(n, max(int(math.floor(self.fraction * whole + 0.5)), self.min_per_class))

    def top(self, score: np.ndarray) -> Selection:
        """The highest-scoring rows within the budgets (see ``top_fraction``).

        Args:
            score: one score per row of the round in use.

        Returns:
            The selection, weights 1.
        """
        keep = top_fraction(score, self.labels, self.fraction, per_class=self.per_class,
                            min_per_class=self.min_per_class, full_counts=self.full_counts)
        return Selection(self.ids[keep])

    def sample(self, score: np.ndarray, temperature: float, uniform: float = 0.0,
               reweight: bool = False, unseen: str = "mean") -> Selection:
        """A class-balanced draw without replacement, more likely the higher the score.

        In each class (or overall with ``per_class=False``) the scores are standardised
        (z = (s - mean) / std over the rows that have one) and row i is drawn with
        probability proportional to ``(1 - uniform) * softmax(z / temperature)_i + uniform
        / n`` (Gumbel top-k: k distinct rows, seeded by (seed, epoch)); ``temperature=0``
        keeps the top k (hard). Rows without a score (NaN) count as ``z = 0`` with
        ``unseen="mean"``, or are all taken first (in random order) with ``"first"``.
        ``reweight=True`` gives each drawn row the loss weight ``1 / (n p_i)``, scaled to
        mean 1 (importance weights, Katharopoulos and Fleuret 2018).

        Args:
            score: one score per row of the round in use (NaN: not scored yet).
            temperature: softmax temperature; 0 keeps the top k.
            uniform: share of the draw probability spread uniformly.
            reweight: give drawn rows importance weights.
            unseen: ``"mean"`` or ``"first"``, how rows without a score are drawn.

        Returns:
            The selection with its weights.

        Raises:
            ValueError: ``unseen`` is neither ``"mean"`` nor ``"first"``.
        """
        check_unseen(unseen)
        rng = self.rng(per_epoch=True)
        score = np.asarray(score, dtype=np.float64)
        picked, weights = [], []
        for rows, k in self.groups():
            if k == 0:
                continue
            s, n = score[rows], len(rows)
            seen = ~np.isnan(s)
            z = np.zeros(n)
            if seen.any():
                mu, sd = s[seen].mean(), s[seen].std()
                z[seen] = (s[seen] - mu) / (sd if sd > 0 else 1.0)
            if temperature > 0:
                e = np.exp((z - z.max()) / temperature)
                p = (1 - uniform) * e / e.sum() + uniform / n
            else:
                p = np.full(n, 1.0 / n)
            # Gumbel top-k draws k rows without replacement with probabilities p; the hard
            # top-k breaks ties (rows without a score) at random
            noise = rng.gumbel(size=n) if temperature > 0 else 1e-9 * rng.random(n)
            key = (np.log(p) if temperature > 0 else z) + noise
            rank = np.argsort(-key, kind="stable")
            if unseen == "first":  # every unscored row first (random order), then by key
                rank = np.concatenate([rank[~seen[rank]], rank[seen[rank]]])
            take = rank[:k]
            picked.append(rows[take])
            w = 1.0 / (n * p[take])
            weights.append(w / w.mean() if reweight else np.ones(k))
        if not picked:
            return Selection(self.ids[:0])
        return Selection(self.ids[np.concatenate(picked)],
                         np.concatenate(weights).astype(np.float32))

    def groups(self):
        """Row positions of each class (per-class selection) or of every row (global).

        Yields:
            ``(row positions, number to keep)`` for each group.
        """
        if not self.per_class:
            yield np.arange(len(self.ids)), self.total_budget()
            return
        order = np.argsort(self.labels, kind="stable")
        classes, budget = self.budget()
        bounds = np.searchsorted(self.labels[order], classes, side="left")
        ends = np.append(bounds[1:], len(order))
        for start, end, k in zip(bounds, ends, budget):
            yield order[start:end], int(k)


def check_unseen(unseen) -> None:
    """Refuse an ``unseen`` setting of ``SelectionContext.sample`` other than mean or first."""
    if unseen not in ("mean", "first"):
        raise ValueError(f"unseen must be 'mean' or 'first'; got {unseen!r}")


# ------------------------------------------------------------------ entry points
def check_request(method, fraction, seed, min_per_class, options) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered methods: {sorted(METHODS)}")
    check_fraction("fraction", fraction)
    non_negative_int("seed", seed)
    non_negative_int("min_per_class", min_per_class)
    spec = METHODS[method]
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = sorted(spec.options) or "none"
        raise ValueError(f"method {method!r} has no option(s) {unknown}; it accepts {accepted}")
    for key, value in options.items():
        _check_option(method, key, value, spec.options[key])
    return {**spec.options, **options}


def _check_option(method: str, key: str, value, default) -> None:
    """A method option must be of its default's kind (a number for a number, ...)."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, (bool, np.bool_)), "true or false"
    elif isinstance(default, (int, float)):
        ok = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))
        kind = "a finite number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:  # a default of another kind (None, a list): the method checks it
        return
    if not ok:
        raise ValueError(f"method {method!r} option {key!r} must be {kind} (default "
                         f"{default!r}); got {value!r}")


def unknown_exclusions(unknown: np.ndarray):
    """The error for exclusion ids that the score tables lack (a ``UnknownIds``)."""
    from ..common.checks import UnknownIds

    return UnknownIds(f"the exclusion list names {len(unknown)} sample ids that the score "
                      f"tables lack, e.g. {unknown[:5].tolist()} (an audit of another "
                      "dataset?)")
