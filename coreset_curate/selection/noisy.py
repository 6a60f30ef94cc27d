"""Selection that keeps likely mislabeled samples out of the subsets.

A network fits the samples whose label is right before it memorises the wrong ones, so
while it trains, the samples with the smallest loss in their class are the likely clean
ones (the small-loss criterion of co-teaching, Han et al. 2018), and the losses of a class
fall into two groups that a two-component mixture separates (DivideMix, Li et al. 2020).

``small_loss`` keeps, in every class, the share of samples the noise audit's estimator
(the calibrated confident joint, averaged over the scoring rounds) takes to be correctly
labeled, lowest loss first; ``loss_mixture`` keeps the samples whose loss the low-loss
component of a two-component Gaussian mixture explains best. Neither needs the true noise
rate. Both then draw the epoch's subset at random from what they keep, re-drawn every
epoch as ``random_epoch`` draws from every sample, and both read training-step rounds
(``free_scores``): a sample not trained on yet has no loss and is kept.
"""

from __future__ import annotations

import logging

import numpy as np

from ..labels.counts import mean_joint
from .core import Selection, SelectionContext, register_method

__all__ = ["noise_rate_estimates", "mixture_clean_probability"]

log = logging.getLogger(__name__)


def noise_rate_estimates(ctx: SelectionContext) -> np.ndarray:
    """Per class, the share of wrong labels the noise audit's estimator finds.

    Args:
        ctx: the selection's context; its rounds need ``pred`` and ``prob_label``
            (``max_prob`` sharpens the estimate when present).

    Returns:
        One rate per class group of ``ctx.labels``, in [0, 1].

    Raises:
        ValueError: no round has the columns, or none of their rows has a score.
    """
    groups = ctx.labels
    k = int(groups.max()) + 1 if len(groups) else 0
    shift = groups[0] - ctx.columns["label"][0] if len(groups) else 0  # a task's label -1: +1
    usable = []
    for rnd in ctx.rounds:
        if "pred" not in rnd or "prob_label" not in rnd:
            continue
        p = rnd["prob_label"].astype(np.float64)
        seen = np.isfinite(p) & np.isfinite(rnd["pred"].astype(np.float64))
        if not seen.any():
            continue
        part = {c: v[seen] for c, v in rnd.items() if c in ("label", "pred", "prob_label",
                                                              "max_prob")}
        part["label"] = part["label"].astype(np.int64) + shift
        part["pred"] = part["pred"].astype(np.int64) + shift
        usable.append(part)
    if not usable:
        raise ValueError("estimating the noise rate needs scoring rounds with 'pred' and "
                         "'prob_label' scores (score the data, or train with free_scores)")
    counts = np.bincount(groups.astype(np.int64), minlength=k).astype(np.float64)
    joint = mean_joint(usable, counts, k)
    wrong = joint.sum(1) - np.diag(joint)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(counts > 0, wrong / np.maximum(counts, 1), 0.0), 0.0, 1.0)


def _any_scored(ctx: SelectionContext) -> bool:
    """Whether any round holds a sample with a probability of its label (a trained-on or
    scored sample)."""
    return any("prob_label" in r and np.isfinite(r["prob_label"].astype(np.float64)).any()
               for r in ctx.rounds)


def _draw_from(ctx: SelectionContext, kept: np.ndarray) -> Selection:
    """Per class, the class budget drawn at random (seeded by seed and epoch) from the rows
    in ``kept``; all of them where the class keeps fewer than its budget."""
    rng = ctx.rng(per_epoch=True)
    key = rng.random(len(ctx.ids))
    picked = []
    for rows, k in ctx.groups():
        pool = rows[kept[rows]]
        if k == 0 or len(pool) == 0:
            continue
        order = pool[np.argsort(key[pool], kind="stable")]
        picked.append(order[: min(k, len(order))])
    rows = np.concatenate(picked) if picked else np.array([], dtype=np.int64)
    return Selection(ctx.ids[rows])


@register_method("small_loss", columns=("loss", "pred", "prob_label", "max_prob"),
                 options={"rate": None, "max_rate": 0.5}, exact_size=False, all_rounds=True,
                 partial=True)
def _small_loss(ctx: SelectionContext) -> Selection:
    """Per class, keep the ``1 - rate`` of the samples with the smallest loss, where
    ``rate`` is the class's noise rate as the audit estimates it (or the ``rate`` option,
    one share for every class), capped at ``max_rate``; then draw the class budget at
    random from the kept ones. Where a class keeps fewer samples than its budget, its
    subset is smaller (with ``fraction`` 1 the subset is every kept sample)."""
    given, cap = ctx.options["rate"], float(ctx.options["max_rate"])
    if not 0 <= cap < 1:
        raise ValueError(f"small_loss option max_rate must be in [0, 1); got {cap}")
    if given is not None and (isinstance(given, bool) or not isinstance(given, (int, float))
                              or not 0 <= given <= cap):
        raise ValueError(f"small_loss option rate must be a number in [0, max_rate={cap}]; "
                         f"got {given!r}")
    loss = ctx.columns["loss"].astype(np.float64)
    groups = ctx.labels
    if given is None and not _any_scored(ctx):
        # training-step rounds before any sample was trained on (free_scores' first epoch):
        # nothing to rank or estimate yet, and no reason to drop a sample
        return _draw_from(ctx, np.ones(len(loss), dtype=bool))
    rates = (np.full(int(groups.max()) + 1, float(given)) if given is not None
             else noise_rate_estimates(ctx))
    capped = rates > cap
    if capped.any():
        log.warning("small_loss: the estimated noise rate of %d class(es) is above max_rate "
                    "%.2f (up to %.2f); keeping 1 - max_rate of them", int(capped.sum()), cap,
                    float(rates.max()))
    rates = np.minimum(rates, cap)
    kept = np.zeros(len(loss), dtype=bool)
    for rows, _ in ctx.groups():
        if not len(rows):
            continue
        seen = rows[~np.isnan(loss[rows])]
        kept[rows[np.isnan(loss[rows])]] = True  # not trained on yet: no reason to drop
        if not ctx.per_class:
            rate = float(np.average(rates[groups[seen]])) if len(seen) else 0.0
        else:
            rate = float(rates[groups[rows[0]]])
        n_keep = len(seen) - int(round(rate * len(seen)))
        order = seen[np.argsort(loss[seen], kind="stable")]  # ties: the smaller sample id
        kept[order[:n_keep]] = True
    return _draw_from(ctx, kept)


def mixture_clean_probability(loss: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Posterior probability of the low-loss component of a two-component 1-D Gaussian
    mixture fitted to ``loss`` by expectation-maximisation.

    The losses are scaled to [0, 1] first; the components start at the 10th and 90th
    percentiles, so the fit is deterministic.

    Args:
        loss: per-sample losses (finite).
        iterations: EM steps (it stops early once the likelihood settles).

    Returns:
        One probability per sample; 1 everywhere when the losses do not vary.
    """
    x = np.asarray(loss, dtype=np.float64)
    if len(x) < 2 or x.max() - x.min() < 1e-12:
        return np.ones(len(x))
    x = (x - x.min()) / (x.max() - x.min())
    mu = np.percentile(x, [10, 90]).astype(np.float64)
    var = np.full(2, max(x.var(), 1e-6))
    pi = np.array([0.5, 0.5])
    last = -np.inf
    resp = np.zeros((len(x), 2))
    for _ in range(iterations):
        log_p = (np.log(pi) - 0.5 * np.log(2 * np.pi * var)
                 - 0.5 * (x[:, None] - mu) ** 2 / var)
        top = log_p.max(1, keepdims=True)
        total = top[:, 0] + np.log(np.exp(log_p - top).sum(1))
        resp = np.exp(log_p - total[:, None])
        ll = float(total.mean())
        nk = resp.sum(0) + 1e-12
        pi = nk / len(x)
        mu = (resp * x[:, None]).sum(0) / nk
        var = np.maximum((resp * (x[:, None] - mu) ** 2).sum(0) / nk, 1e-6)
        if ll - last < 1e-8:
            break
        last = ll
    return resp[:, int(np.argmin(mu))]


@register_method("loss_mixture", columns=("loss",), options={"threshold": 0.5},
                 exact_size=False, partial=True)
def _loss_mixture(ctx: SelectionContext) -> Selection:
    """Keep the samples whose clean probability under a two-component mixture of the
    losses (``mixture_clean_probability``, fitted per class, or over all samples with
    ``per_class`` off) is above ``threshold``; then draw the class budget at random from
    the kept ones. Where a class keeps fewer than its budget, its subset is smaller."""
    threshold = float(ctx.options["threshold"])
    if not 0 <= threshold < 1:
        raise ValueError(f"loss_mixture option threshold must be in [0, 1); got {threshold}")
    loss = ctx.columns["loss"].astype(np.float64)
    seen = ~np.isnan(loss)
    kept = ~seen  # not trained on yet: kept
    for rows, _ in ctx.groups():
        rows = rows[seen[rows]]
        if len(rows):
            kept[rows] = mixture_clean_probability(loss[rows]) > threshold
    return _draw_from(ctx, kept)
