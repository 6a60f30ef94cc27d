"""The selection methods, each one registered function of a ``SelectionContext``."""

from __future__ import annotations

import math

import numpy as np

from .core import Selection, SelectionContext, beta, register_method
from .rounds import aligned_column, small_ints

# ------------------------------------------------------------------ methods
@register_method("acs", columns=("evs", "ds"))
def _acs(ctx: SelectionContext) -> Selection:
    """Adaptive coreset selection: beta(t) * EVS + (1 - beta(t)) * DS, highest first."""
    if ctx.epochs is None:
        raise ValueError("acs needs epochs= (the run's length) to compute its schedule")
    b = beta(ctx.schedule, ctx.epoch, ctx.epochs)
    # astype copies: the in-place ops below never touch the (read-only) table's buffers
    score = ctx.column("evs").astype(np.float64)
    score *= b
    if b < 1.0:  # separate multiply and add: the same rounding as the formula written out
        rest = ctx.column("ds").astype(np.float64)
        rest *= 1.0 - b
        score += rest
    return ctx.top(score)


@register_method("evs", columns=("evs",))
@register_method("el2n", columns=("evs",))
def _el2n(ctx: SelectionContext) -> Selection:
    """Highest error vector score (EL2N of the student's current weights)."""
    return ctx.top(ctx.column("evs"))


@register_method("loss", columns=("loss",))
def _loss(ctx: SelectionContext) -> Selection:
    """Highest cross-entropy."""
    return ctx.top(ctx.column("loss"))


@register_method("entropy", columns=("entropy",))
def _entropy(ctx: SelectionContext) -> Selection:
    """Highest predictive entropy."""
    return ctx.top(ctx.column("entropy"))


@register_method("margin", columns=("margin",))
def _margin(ctx: SelectionContext) -> Selection:
    """Smallest margin (label logit minus the largest other logit) first."""
    return ctx.top(-ctx.column("margin").astype(np.float64))


@register_method("least_confidence", columns=("max_prob",))
def _least_confidence(ctx: SelectionContext) -> Selection:
    """Lowest top-class probability first (1 - max_prob)."""
    return ctx.top(1.0 - ctx.column("max_prob").astype(np.float64))


@register_method("random")
def _random(ctx: SelectionContext) -> Selection:
    """Class-balanced random subset drawn once from the seed: the same every epoch."""
    return ctx.top(ctx.rng(per_epoch=False).random(len(ctx.ids)))


@register_method("random_epoch")
def _random_epoch(ctx: SelectionContext) -> Selection:
    """Class-balanced random subset redrawn for each selection epoch."""
    return ctx.top(ctx.rng(per_epoch=True).random(len(ctx.ids)))


@register_method("random_cover")
def _random_cover(ctx: SelectionContext) -> Selection:
    """Class-balanced random subsets that cover the data before repeating it: each class's
    rows are shuffled once per cycle (seeded by seed, cycle and class) and epoch t takes
    the t-th run of k rows of that order, so the subsets of successive epochs are disjoint
    until every sample has been drawn once (``random_epoch`` draws each epoch afresh and
    repeats samples from the start). A run that continues past a cycle's end starts the
    next shuffled cycle, with no sample twice in one subset. Reads no scores."""
    chosen = []
    for rows, k in ctx.groups():
        n = len(rows)
        if k == 0:
            continue
        start = ctx.epoch * k
        cycle, offset = divmod(start, n)

        def order(c: int) -> np.ndarray:
            key = [ctx.seed, c, int(ctx.labels[rows[0]]) if ctx.per_class else -1]
            return rows[np.random.default_rng(np.random.SeedSequence(key)).permutation(n)]

        take = order(cycle)[offset:offset + k]
        if len(take) < k:  # the cycle ends inside this subset: top up from the next one
            nxt = order(cycle + 1)
            take = np.concatenate([take, nxt[~np.isin(nxt, take)][: k - len(take)]])
        chosen.append(take)
    rows = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    return Selection(ctx.ids[rows])


@register_method("forgetting", columns=("pred",), all_rounds=True)
def _forgetting(ctx: SelectionContext) -> Selection:
    """Most forgetting events (correct in one round, wrong in the next) across the rounds
    up to the epoch; samples never predicted correctly rank above all others."""
    pred = aligned_column(ctx.rounds, ctx.ids, "pred")
    label = aligned_column(ctx.rounds, ctx.ids, "label")
    c = np.where(np.isnan(pred), np.nan, pred == label)  # rounds x samples, NaN: absent
    prev, nxt = c[:-1], c[1:]
    events = np.nansum((prev == 1) & (nxt == 0), axis=0)
    never = ~(c == 1).any(axis=0)
    score = events.astype(np.float64) + never * (len(ctx.rounds) + 1)
    return ctx.top(score)


@register_method("ccs", columns=("evs",), options={"score": "evs", "hard_cut": 0.1, "bins": 50})
def _ccs(ctx: SelectionContext) -> Selection:
    """Coverage-centric selection (Zheng et al. 2023): drop the hardest ``hard_cut`` share,
    then sample evenly across ``bins`` equal-width score bins (the sparsest bins first)."""
    name, cut, bins = ctx.options["score"], float(ctx.options["hard_cut"]), int(ctx.options["bins"])
    if not 0 <= cut < 1:
        raise ValueError(f"ccs option hard_cut must be in [0, 1); got {cut}")
    if bins < 1:
        raise ValueError(f"ccs option bins must be >= 1; got {bins}")
    score = ctx.column(name).astype(np.float64)
    rng = ctx.rng(per_epoch=True)
    chosen = []
    for rows, k in ctx.groups():
        if k == 0:
            continue
        order = rows[np.argsort(-score[rows], kind="stable")]
        n_cut = min(int(math.floor(cut * len(rows))), len(rows) - k)
        pool = order[n_cut:]
        s = score[pool]
        edges = np.linspace(s.min(), s.max(), bins + 1)
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        left, take = k, np.zeros(bins, dtype=np.int64)
        for i, b in enumerate(np.argsort(counts, kind="stable")):
            share = left // (bins - i)
            take[b] = min(counts[b], share)
            left -= take[b]
        # the remainder (from rounding) goes to bins that still have samples, sparsest first
        for b in np.argsort(counts, kind="stable"):
            extra = min(left, counts[b] - take[b])
            take[b] += extra
            left -= extra
        for b in np.flatnonzero(take):
            members = pool[which == b]
            chosen.append(rng.choice(members, size=int(take[b]), replace=False))
    rows = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    return Selection(ctx.ids[rows])


def _embeddings(ctx: SelectionContext):
    import torch

    emb = ctx.column("embedding")
    return torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))


@register_method("moderate", columns=("embedding",))
def _moderate(ctx: SelectionContext) -> Selection:
    """Moderate coreset (Xia et al. 2023): samples whose distance to their class centre is
    closest to the median distance of the class."""
    import torch

    emb = _embeddings(ctx)
    labels = torch.from_numpy(small_ints(ctx.labels).astype(np.int64))
    k = int(labels.max()) + 1
    sums = torch.zeros(k, emb.shape[1]).index_add_(0, labels, emb)
    centres = sums / torch.bincount(labels, minlength=k).clamp_min(1)[:, None]
    dist = (emb - centres[labels]).norm(dim=1).numpy().astype(np.float64)
    median = np.zeros(k)
    for c in np.unique(ctx.labels):
        median[c] = np.median(dist[ctx.labels == c])
    return ctx.top(-np.abs(dist - median[ctx.labels]))


@register_method("kcenter", columns=("embedding",))
def _kcenter(ctx: SelectionContext) -> Selection:
    """Greedy k-center on the embeddings (per class, or over all samples with
    ``per_class=False``), starting from a seeded random sample; batched in torch."""
    import torch

    emb = _embeddings(ctx)
    rng = ctx.rng(per_epoch=True)
    chosen = []
    for rows, k in ctx.groups():
        if k == 0:
            continue
        x = emb[torch.from_numpy(rows)]
        picked = np.empty(k, dtype=np.int64)
        picked[0] = rng.integers(len(rows))
        min_d = (x - x[picked[0]]).pow(2).sum(1)
        for i in range(1, k):
            nxt = int(torch.argmax(min_d))
            picked[i] = nxt
            min_d = torch.minimum(min_d, (x - x[nxt]).pow(2).sum(1))
        chosen.append(rows[picked])
    rows = np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)
    return Selection(ctx.ids[rows])


@register_method("infobatch", columns=("loss",), options={"prune_ratio": 0.5, "anneal": 0.875},
                 exact_size=False, partial=True)
def _infobatch(ctx: SelectionContext) -> Selection:
    """InfoBatch (Qin et al. 2024): randomly drop ``prune_ratio`` of the samples whose loss
    is below the mean and weight the kept ones by 1 / (1 - prune_ratio); the full data
    from ``anneal * epochs`` on. Decides its own size (``fraction`` is not used). On
    training-step rounds (``free_scores``) a row not trained on yet has no loss: it is kept
    and left out of the mean, as InfoBatch starts every sample above the mean (so the
    first epoch trains on the full data)."""
    r, anneal = float(ctx.options["prune_ratio"]), float(ctx.options["anneal"])
    if not 0 <= r < 1:
        raise ValueError(f"infobatch option prune_ratio must be in [0, 1); got {r}")
    if ctx.epochs is not None and ctx.epoch >= anneal * ctx.epochs:
        return Selection(ctx.ids)
    loss = ctx.columns["loss"].astype(np.float64)
    seen = ~np.isnan(loss)
    if not seen.any():
        return Selection(ctx.ids)
    low = np.zeros(len(loss), dtype=bool)
    low[seen] = loss[seen] < loss[seen].mean()
    drop = low & (ctx.rng(per_epoch=True).random(len(loss)) < r)
    keep = ~drop
    weights = np.where(low[keep], 1.0 / (1.0 - r), 1.0)
    return Selection(ctx.ids[keep], weights)


@register_method("rho", columns=("loss", "ref_prob_label"), partial=True,
                 options={"temperature": 1.0, "uniform": 0.2, "reweight": False,
                          "unseen": "mean"})
def _rho(ctx: SelectionContext) -> Selection:
    """Reducible loss (after RHO-LOSS, Mindermann et al. 2022, with the full-precision
    teacher as the irreducible-loss model): the student's cross-entropy minus the
    teacher's, ``loss + log(ref_prob_label)``. High where the student lags a teacher that
    gets the sample right; low where both fail (a wrong label, an outlier) or both succeed.
    Drawn softly per class (``SelectionContext.sample``: ``temperature`` on standardised
    scores, ``uniform`` share, ``reweight``; ``temperature: 0`` is the hard top-k), so the
    bulk keeps a share of the budget. Rows not scored yet (training-step rounds) count as
    average (``unseen: mean``) or come first (``unseen: first``)."""
    t, u = float(ctx.options["temperature"]), float(ctx.options["uniform"])
    if t < 0 or not 0 <= u <= 1:
        raise ValueError(f"rho needs temperature >= 0 and uniform in [0, 1]; got {t}, {u}")
    loss = ctx.columns["loss"].astype(np.float64)
    ref = ctx.columns.get("ref_prob_label", np.full(len(loss), np.nan)).astype(np.float64)
    scored = ~np.isnan(loss)
    if scored.any() and np.isnan(ref[scored]).all():
        raise ValueError("rho needs the teacher's probability of the label (ref_prob_label): "
                         "score with a reference, or train with distillation")
    ref = np.clip(ref, 1e-8, 1.0)
    return ctx.sample(loss + np.log(ref), t, u, bool(ctx.options["reweight"]),
                      str(ctx.options["unseen"]))
