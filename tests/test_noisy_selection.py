"""small_loss and loss_mixture: selection that keeps likely mislabeled samples out."""

import numpy as np
import pyarrow as pa
import pytest

import coreset_curate as cc
from coreset_curate.selection.noisy import mixture_clean_probability

K, PER_CLASS, NOISE = 5, 200, 0.2


def _round(epoch=0, seed=0, unseen=0):
    """A scoring round of K classes where NOISE of every class is mislabeled the way a
    student sees it: predicted as another class with confidence, a low probability and a
    high loss under the given label. Returns the table and the mask of wrong labels."""
    rng = np.random.default_rng(seed)
    n = K * PER_CLASS
    label = np.repeat(np.arange(K), PER_CLASS)
    wrong = np.zeros(n, dtype=bool)
    for c in range(K):
        wrong[c * PER_CLASS + rng.choice(PER_CLASS, int(NOISE * PER_CLASS), replace=False)] = True
    p_label = np.where(wrong, rng.uniform(0.01, 0.1, n), rng.uniform(0.6, 0.99, n))
    pred = np.where(wrong, (label + 1 + rng.integers(0, K - 1, n)) % K, label)
    max_prob = np.where(wrong, rng.uniform(0.7, 0.95, n), p_label)
    loss = -np.log(p_label)
    if unseen:
        loss[:unseen] = np.nan
    table = pa.table({"sample_id": np.arange(n, dtype=np.int64) + 100, "label": label,
                      "epoch": np.full(n, epoch, np.int32), "loss": loss.astype(np.float32),
                      "pred": pred, "prob_label": p_label.astype(np.float32),
                      "max_prob": max_prob.astype(np.float32)})
    return table, wrong


def _wrong_share(selection, wrong):
    return float(wrong[selection.sample_ids - 100].mean())


def test_small_loss_estimates_the_rate_and_keeps_the_wrong_labels_out():
    table, wrong = _round()
    kept = cc.select(table, "small_loss", 1.0)  # the whole data, less what looks wrong
    assert len(kept) == pytest.approx((1 - NOISE) * len(wrong), rel=0.05)
    assert _wrong_share(kept, wrong) < 0.02
    sub = [cc.select(table, "small_loss", 0.1, epoch=e) for e in (0, 1)]
    assert all(len(s) == 0.1 * len(wrong) for s in sub)  # every class keeps its budget
    assert all(_wrong_share(s, wrong) < 0.02 for s in sub)
    assert not np.array_equal(sub[0].sample_ids, sub[1].sample_ids)  # re-drawn each epoch
    random = cc.select(table, "random_epoch", 0.1)
    assert _wrong_share(random, wrong) > 0.1  # what it is compared with


def test_small_loss_before_any_training_step_draws_every_class_budget():
    """free_scores' first round holds no score (no sample trained on yet): small_loss has
    no rate to estimate and nothing to drop, and draws each class's budget at random
    (the shipped curate recipe's first epoch; it raised before)."""
    table, _ = _round()
    n = table.num_rows
    empty = table
    for col in ("loss", "prob_label", "max_prob"):
        empty = empty.set_column(empty.schema.get_field_index(col), col,
                                 pa.array(np.full(n, np.nan, np.float32)))
    empty = empty.set_column(empty.schema.get_field_index("pred"), "pred",
                             pa.array(np.full(n, -1, np.int64)))
    picked = cc.select(empty, "small_loss", 0.1, epoch=0)
    assert len(picked) == 0.1 * n
    labels = np.repeat(np.arange(K), PER_CLASS)
    assert (np.bincount(labels[picked.sample_ids - 100], minlength=K) == 0.1 * PER_CLASS).all()
    again = cc.select(empty, "small_loss", 0.1, epoch=1)
    assert not np.array_equal(picked.sample_ids, again.sample_ids)  # re-drawn each epoch


def test_small_loss_takes_a_given_rate_and_checks_it():
    table, wrong = _round()
    kept = cc.select(table, "small_loss", 1.0, options={"rate": 0.3})
    assert len(kept) == round(0.7 * PER_CLASS) * K
    with pytest.raises(ValueError, match="rate must be a number in"):
        cc.select(table, "small_loss", 1.0, options={"rate": 0.7})
    with pytest.raises(ValueError, match="max_rate must be in"):
        cc.select(table, "small_loss", 1.0, options={"max_rate": 1.0})


def test_samples_not_trained_on_yet_are_kept():
    table, wrong = _round(unseen=50)
    for method in ("small_loss", "loss_mixture"):
        kept = cc.select(table, method, 1.0)
        assert np.isin(np.arange(50) + 100, kept.sample_ids).all(), method


def test_loss_mixture_splits_clean_from_noisy_without_a_rate():
    table, wrong = _round(seed=1)
    kept = cc.select(table, "loss_mixture", 1.0)
    assert _wrong_share(kept, wrong) < 0.02
    assert len(kept) > 0.9 * (~wrong).sum()
    sub = cc.select(table, "loss_mixture", 0.1, epoch=3)
    assert len(sub) == 0.1 * len(wrong) and _wrong_share(sub, wrong) < 0.02


def test_mixture_clean_probability_on_two_groups():
    rng = np.random.default_rng(0)
    clean, noisy = rng.normal(0.1, 0.05, 900), rng.normal(2.0, 0.3, 100)
    p = mixture_clean_probability(np.r_[clean, noisy])
    assert (p[:900] > 0.5).mean() > 0.99 and (p[900:] < 0.5).mean() > 0.99
    assert np.array_equal(mixture_clean_probability(np.ones(5)), np.ones(5))
