"""Soft (sampled) selection out of core: ``SelectionContext.sample`` over a score table read
by row groups, with the draws of the in-memory path.

In memory, ``sample`` standardises the scores of a class, turns them into draw
probabilities (a softmax at ``temperature`` mixed with a ``uniform`` share) and keeps the k
largest Gumbel keys ``log p + g``, the noise drawn class after class (classes in label
order, the rows of a class in id order) from one generator. Out of core the class
statistics come first, so the table is read four times:

1. pass 1 of ``streamed`` (rows per class, the checks, the budgets);
2. per class: the count, mean and sum of squared deviations of the scored rows (batches
   merged as Chan, Golub and LeVeque do), their largest score;
3. per class: the sum of ``exp((z - z_max) / temperature)`` (skipped at temperature 0);
4. the keys, each class's noise from a copy of the generator advanced
   (``PCG64.advance``) to where the in-memory draw of that class begins, plus the class's
   rows already read; the k largest keys of each class are kept (``topk.TopK``).

The noise is the same, draw for draw; the statistics agree with numpy's up to rounding (the
sums run in another order), so the ids are the in-memory ones unless two keys of a class lie
within about 1e-15 of each other, and the importance weights (``reweight``) agree to about
1e-12. With ``unseen="first"`` the unscored rows of a class are a group of their own that
takes the class's budget first. Peak memory: a batch, the kept rows and a few numbers a
class.
"""

from __future__ import annotations

import numpy as np

from .core import Selection, SelectionContext, check_unseen
from .streamed import BATCH_ROWS, _Recorder, open_streamed
from .topk import TopK

__all__ = ["SAMPLED", "select_sampled"]

# methods whose selection is ``ctx.sample`` of a score computed row by row
SAMPLED = frozenset({"rho"})


class _SampleRecorder(_Recorder):
    """A batch context whose ``sample`` hands back the score and the draw's settings."""

    def sample(self, score, temperature, uniform=0.0, reweight=False, unseen="mean"):  # noqa: D102
        check_unseen(unseen)
        self.recorded = np.asarray(score, dtype=np.float64)
        self.params = (float(temperature), float(uniform), bool(reweight), str(unseen))
        return Selection(self.ids[:0])


def select_sampled(path, method: str, fraction: float, *, epoch: int, epochs: int | None,
                   schedule: str, seed: int, per_class: bool, min_per_class: int,
                   options: dict, exclude=None, batch_rows: int = BATCH_ROWS) -> Selection:
    """``select`` of a method in ``SAMPLED`` for one Parquet score table, read by row groups
    (module doc); the arguments are ``streamed.select_streamed``'s.

    Returns:
        The ``Selection`` with its weights.

    Raises:
        ValueError, TableError, UnknownIds: as ``select_streamed``.
    """
    if method not in SAMPLED:
        raise ValueError(f"method {method!r} is not a sampled method: {sorted(SAMPLED)}")
    table = open_streamed(path, method, fraction, epoch=epoch, per_class=per_class,
                          min_per_class=min_per_class, exclude=exclude, batch_rows=batch_rows)

    def batches():
        return table.scored(_SampleRecorder, epoch=epoch, epochs=epochs, schedule=schedule,
                            seed=seed, options=options)

    stats = _Moments(len(table.budget))
    for _, group, ctx in batches():
        stats.add(group, ctx.recorded)
        params = ctx.params
    t, u, reweight, unseen = params
    n_all = table.kept_counts.astype(np.float64)
    mean, sd = stats.mean, stats.sd()
    z_max = np.where(stats.count > 0, (stats.top - mean) / sd, 0.0)
    z_max = np.where(stats.count < n_all, np.maximum(z_max, 0.0), z_max)  # unscored: z = 0

    def standard(group, s):
        return np.where(np.isnan(s), 0.0, (s - mean[group]) / sd[group])

    e_sum = np.zeros(len(n_all))
    if t > 0:
        for _, group, ctx in batches():
            e = np.exp((standard(group, ctx.recorded) - z_max[group]) / t)
            e_sum += np.bincount(group, weights=e, minlength=len(n_all))
    budget, split = _budgets(table.budget, n_all - stats.count, unseen)
    best, noise = TopK(budget, batch_rows), _Noise(table.budget, table.kept_counts)
    for ids, group, ctx in batches():
        z = standard(group, ctx.recorded)
        if t > 0:
            p = (1 - u) * np.exp((z - z_max[group]) / t) / e_sum[group] + u / n_all[group]
            key = np.log(p) + noise.draw(ctx, group, "gumbel")
        else:
            p = 1.0 / n_all[group]
            key = z + noise.draw(ctx, group, "random")
        sub = 2 * group + ~np.isnan(ctx.recorded) if split else group
        best.add(ids, sub, key, p)
    ids, sub, _, p = best.result()
    group = sub // 2 if split else sub
    if not reweight:
        return Selection(ids)
    w = 1.0 / (n_all[group] * p)
    w_mean = (np.bincount(group, weights=w, minlength=len(n_all))
              / np.maximum(np.bincount(group, minlength=len(n_all)), 1))
    return Selection(ids, w / w_mean[group])


class _Moments:
    """Count, mean, sum of squared deviations and largest value of each group's scored
    rows, merged batch by batch."""

    def __init__(self, groups: int) -> None:
        self.count = np.zeros(groups)
        self.mean = np.zeros(groups)
        self.m2 = np.zeros(groups)
        self.top = np.full(groups, -np.inf)

    def add(self, group: np.ndarray, score: np.ndarray) -> None:
        seen = ~np.isnan(score)
        g, s = group[seen], score[seen]
        size = len(self.count)
        n_b = np.bincount(g, minlength=size).astype(np.float64)
        hit = n_b > 0
        mean_b = np.zeros(size)
        mean_b[hit] = np.bincount(g, weights=s, minlength=size)[hit] / n_b[hit]
        m2_b = np.bincount(g, weights=(s - mean_b[g]) ** 2, minlength=size)
        n = self.count + n_b
        delta = mean_b - self.mean
        safe = np.where(hit, n, 1.0)
        self.mean = np.where(hit, self.mean + delta * n_b / safe, self.mean)
        self.m2 = self.m2 + np.where(hit, m2_b + delta ** 2 * self.count * n_b / safe, 0.0)
        self.count = n
        np.maximum.at(self.top, g, s)

    def sd(self) -> np.ndarray:
        """The standard deviation (numpy's, ddof 0), 1 where it is 0 or undefined."""
        sd = np.sqrt(self.m2 / np.maximum(self.count, 1))
        return np.where(sd > 0, sd, 1.0)


def _budgets(budget: np.ndarray, unscored: np.ndarray, unseen: str):
    """The budgets of the groups keys compete in: the classes, or with ``unseen="first"``
    two groups a class (``2c``: its unscored rows, first; ``2c + 1``: the scored)."""
    if unseen != "first":
        return budget, False
    first = np.minimum(budget, unscored.astype(np.int64))
    return np.stack([first, budget - first], axis=1).reshape(-1), True


class _Noise:
    """The in-memory draw's noise for the rows of each class as they are read: class c's
    noise starts after the rows of the classes before it that keep any (``sample`` draws
    nothing for a class whose budget is 0)."""

    def __init__(self, budget: np.ndarray, rows: np.ndarray) -> None:
        self.budget = budget
        drawn = np.where(budget > 0, rows, 0)
        self.start = np.cumsum(drawn) - drawn
        self.generators: dict[int, np.random.Generator] = {}

    def draw(self, ctx, group: np.ndarray, kind: str) -> np.ndarray:
        out = np.zeros(len(group))
        order = np.argsort(group, kind="stable")
        classes, first = np.unique(group[order], return_index=True)
        for c, part in zip(classes, np.split(order, first[1:])):
            if self.budget[c] == 0:
                continue
            if c not in self.generators:
                rng = SelectionContext.rng(ctx, per_epoch=True)
                rng.bit_generator.advance(int(self.start[c]))
                self.generators[c] = rng
            rng = self.generators[c]
            out[part] = rng.gumbel(size=len(part)) if kind == "gumbel" else \
                1e-9 * rng.random(len(part))
        return out
