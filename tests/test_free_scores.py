"""Training-step scores (free_scores), soft class-balanced sampling and the rho method."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import coreset_curate as cc
from coreset_curate.common.index import epoch_rows
from coreset_curate import score_dataset
from coreset_curate.selection import METHODS, select
from coreset_curate.selection.core import SelectionContext
from coreset_curate.scoring.stepscores import StepScores


def _ctx(labels, fraction=0.5, seed=0, epoch=0):
    ids = np.arange(len(labels), dtype=np.int64)
    cols = {"sample_id": ids, "label": np.asarray(labels)}
    return SelectionContext(cols, [cols], fraction, epoch, 10, "cos", seed, True, 0, {})


def test_hard_sample_is_the_per_class_top_k():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    score = rng.random(60)
    ctx = _ctx(labels, fraction=0.25)
    hard = ctx.sample(score, temperature=0.0)
    assert hard.sample_ids.tolist() == ctx.top(score).sample_ids.tolist()
    assert (hard.weights == 1).all()


def test_soft_sample_prefers_high_scores_and_covers_the_bulk():
    labels = np.zeros(100, dtype=np.int64)
    score = np.arange(100, dtype=np.float64)  # row 99 scores highest
    counts = np.zeros(100)
    for seed in range(300):
        counts[_ctx(labels, 0.1, seed=seed).sample(score, 0.5, uniform=0.2).sample_ids] += 1
    top, bottom = counts[90:].mean(), counts[:10].mean()
    assert top > 5 * bottom  # drawn more often the higher the score
    assert (counts[:50] > 0).mean() > 0.9  # the uniform share reaches the bulk
    one = _ctx(labels, 0.1, seed=1).sample(score, 0.5, uniform=0.2)
    assert len(one) == 10 and len(set(one.sample_ids.tolist())) == 10  # distinct rows
    again = _ctx(labels, 0.1, seed=1).sample(score, 0.5, uniform=0.2)
    assert one.sample_ids.tolist() == again.sample_ids.tolist()  # seeded


def test_importance_weights_are_one_over_n_p_with_mean_one():
    labels = np.zeros(10, dtype=np.int64)
    score = np.array([0.0] * 9 + [3.0])
    sel = _ctx(labels, 1.0).sample(score, temperature=1.0, uniform=0.0, reweight=True)
    z = (score - score.mean()) / score.std()
    p = np.exp(z) / np.exp(z).sum()
    w = 1 / (10 * p)
    assert np.allclose(sel.weights, (w / w.mean())[sel.sample_ids], rtol=1e-5)


def test_unseen_rows_come_first_or_count_as_average():
    labels = np.zeros(10, dtype=np.int64)
    score = np.array([np.nan] * 3 + list(range(7)), dtype=np.float64)
    first = _ctx(labels, 0.3).sample(score, temperature=0.0, unseen="first")
    assert first.sample_ids.tolist() == [0, 1, 2]
    mean = _ctx(labels, 0.3).sample(score, temperature=0.0, unseen="mean")
    assert mean.sample_ids.tolist() == [7, 8, 9]  # z of 4..6 is above the unseen rows' 0
    with pytest.raises(ValueError, match="unseen must be"):
        _ctx(labels).sample(score, 0.0, unseen="last")


def test_rho_is_student_minus_teacher_cross_entropy():
    n = 8
    loss = np.array([2.0, 2.0, 0.1, 0.1, 3.0, 1.0, 0.5, 0.5])
    ref = np.array([0.9, 0.01, 0.9, 0.5, 0.05, 0.9, 0.9, 0.1])
    table = pa.table({"sample_id": np.arange(n), "label": np.zeros(n, np.int64),
                      "epoch": np.zeros(n, np.int32), "loss": loss.astype(np.float32),
                      "ref_prob_label": ref.astype(np.float32)})
    chosen = select(table, "rho", 0.25, epoch=0, options={"temperature": 0})
    # reducible loss: 2.0 + log 0.9 = 1.89 (row 0) and 1.0 + log 0.9 = 0.89 (row 5) lead;
    # row 4 (student 3.0, teacher wrong too: 3.0 + log 0.05 = 0.0) is left out
    assert chosen.sample_ids.tolist() == [0, 5]
    assert METHODS["rho"].partial


def test_step_scores_equal_eval_scores_on_the_same_inputs():
    torch.manual_seed(0)
    x, y = torch.randn(50, 5), torch.arange(50) % 3
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    table = score_dataset(student, TensorDataset(x, y), reference=teacher)
    steps = StepScores(np.arange(50), y.numpy())
    with torch.no_grad():
        steps.record(np.arange(25), student(x[:25]), teacher(x[:25]), y[:25])
        steps.record(np.arange(25, 50), student(x[25:]), teacher(x[25:]), y[25:])
    got = steps.table(3)
    for c in ("evs", "ds", "loss", "margin", "prob_label", "ref_prob_label", "pred"):
        assert np.allclose(got.column(c).to_numpy(), table.column(c).to_numpy(), atol=1e-6), c
    assert got.column("step_epoch").to_pylist() == [0] * 50
    fresh = StepScores(np.arange(50), y.numpy()).table(0)
    assert fresh.column("loss").null_count == 50  # nothing recorded: no scores


def test_selector_free_scores_select_from_training_steps(tmp_path):
    torch.manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 6) + nn.functional.one_hot(y, 6).float()
    ds = TensorDataset(x, y)
    student, teacher = nn.Linear(6, 4), nn.Linear(6, 4)
    sel = cc.AdaptiveSelector(ds, "rho", 0.2, epochs=3, reference=teacher, out=tmp_path / "r",
                              free_scores=True, options={"unseen": "first"})
    trained = []
    for epoch in range(3):
        sampler = sel.sampler(epoch, student)
        idx = torch.as_tensor(list(sampler))
        trained.append(set(idx.tolist()))
        with torch.no_grad():
            sel.record(idx, student(x[idx]), teacher(x[idx]), y[idx])
        assert sel.last["scoring_s"] < 1.0
    # no scoring pass: every round comes from the steps, and unseen rows came first
    for epoch in range(3):
        round_ = cc.read_table(tmp_path / "r" / "scores" / f"epoch_{epoch:04d}.parquet")
        assert round_.column("step_epoch").to_numpy().max() == epoch - 1
    assert not (trained[0] & trained[1]) and not (trained[1] & trained[2])
    # resuming from the state keeps the recorded scores
    again = cc.AdaptiveSelector(ds, "rho", 0.2, epochs=3, reference=teacher,
                                out=tmp_path / "r", free_scores=True,
                                options={"unseen": "first"})
    again.load_state_dict(sel.state_dict())
    assert np.array_equal(again.steps.seen, sel.steps.seen)
    with pytest.raises(ValueError, match=r"other settings \(free_scores"):
        cc.AdaptiveSelector(ds, "rho", 0.2, epochs=3, reference=teacher, out=tmp_path / "r",
                            options={"unseen": "first"})  # the folder's index used them
    with pytest.raises(ValueError, match="free_scores=True"):
        cc.AdaptiveSelector(ds, "random_epoch", 0.2, epochs=3).record(idx, None, None, None)


def test_trainer_free_scores_run_resumes_to_the_same_weights(tmp_path):
    from coreset_curate.training import TrainConfig, run_training

    common = dict(data="digits", model="small_cnn", batch_size=64, optimizer="adam",
                  weight_decay=0.0, channels_last=False, limit_train=400, limit_test=100)
    fp = run_training(TrainConfig(**common, mode="fp", epochs=2, lr=3e-3), tmp_path / "fp")
    assert fp is not None
    qat = dict(common, mode="qat", teacher=str(tmp_path / "fp" / "model.pt"), epochs=3,
               lr=5e-4, method="rho", fraction=0.3, reselect_every=1, free_scores=True)
    whole = run_training(TrainConfig(**qat), tmp_path / "a")
    assert run_training(TrainConfig(**qat), tmp_path / "b", stop_after=2) is None
    resumed = run_training(TrainConfig(**qat), tmp_path / "b", resume=True)
    assert resumed["model_sha256"] == whole["model_sha256"]
    # no scoring pass: rho selects from training-step rounds from the start
    rounds = sorted((tmp_path / "a" / "scores").glob("epoch_*.parquet"))
    assert len(rounds) == 3 and all("step_epoch" in cc.read_table(p).column_names
                                    for p in rounds)
    from coreset_curate.selection import class_budget

    labels = cc.read_table(rounds[0]).column("label").to_numpy()
    budget = int(class_budget(np.bincount(labels), 0.3).sum())
    for e in range(3):
        assert len(epoch_rows(cc.read_index(tmp_path / "a" / "index.parquet"), e)[0]) == budget


def test_random_cover_draws_every_sample_once_before_any_twice():
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    table = pa.table({"sample_id": np.arange(60) * 7, "label": labels,
                      "epoch": np.zeros(60, np.int32)})
    subsets = [select(table, "random_cover", 0.2, epoch=e, seed=3).sample_ids
               for e in range(8)]
    # 20% per class: 6, 4 and 2 a subset; the first five subsets partition the data
    assert [len(s) for s in subsets] == [12] * 8
    assert sorted(np.concatenate(subsets[:5]).tolist()) == (np.arange(60) * 7).tolist()
    for s in subsets:
        assert len(set(s.tolist())) == len(s)  # no sample twice in one subset
        assert np.bincount(labels[s // 7]).tolist() == [6, 4, 2]
    # the next cycle is shuffled anew, and the same seed gives the same subsets
    assert subsets[5].tolist() != subsets[0].tolist()
    again = select(table, "random_cover", 0.2, epoch=6, seed=3).sample_ids
    assert again.tolist() == subsets[6].tolist()
    other = select(table, "random_cover", 0.2, epoch=0, seed=4).sample_ids
    assert other.tolist() != subsets[0].tolist()


def test_random_cover_tops_up_across_a_cycle_end_without_repeats():
    labels = np.zeros(10, dtype=np.int64)
    table = pa.table({"sample_id": np.arange(10), "label": labels,
                      "epoch": np.zeros(10, np.int32)})
    # 30%: three a subset, so subset 3 takes the last row of cycle 0 and two of cycle 1
    subsets = [select(table, "random_cover", 0.3, epoch=e).sample_ids for e in range(4)]
    assert all(len(set(s.tolist())) == 3 for s in subsets)
    assert len(set(np.concatenate(subsets[:3]).tolist())) == 9
    assert set(np.concatenate(subsets).tolist()) == set(range(10))
