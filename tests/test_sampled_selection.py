"""Soft (sampled) selection out of core: rho read by row groups draws the in-memory ids."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coreset_curate.selection import select
from coreset_curate.selection.core import check_request
from coreset_curate.selection.sampled import SAMPLED, select_sampled


def _table(path, n=3000, classes=7, seed=0, unscored=0.0, row_group=200):
    """Losses rounded to one decimal (many ties), ids sorted with gaps, one class of a single
    sample, a share of rows unscored (NaN loss: a training-step round), small row groups."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10 * n, size=n, replace=False)).astype(np.int64)
    labels = rng.integers(0, classes, n)
    labels[n // 2] = classes
    loss = np.round(rng.random(n) * 3, 1)
    loss[rng.random(n) < unscored] = np.nan
    cols = {"sample_id": ids, "label": labels, "epoch": np.full(n, 3, dtype=np.int32),
            "loss": loss.astype(np.float32),
            "ref_prob_label": np.round(rng.random(n), 1).clip(0.1, 1).astype(np.float32)}
    pq.write_table(pa.table(cols), path, row_group_size=row_group)
    return ids


def _both(path, fraction=0.1, options=None, **kw):
    args = dict(epoch=5, epochs=20, schedule="cos", seed=4, per_class=True, min_per_class=0)
    args.update(kw)
    whole = select(str(path), "rho", fraction, options=options, **args)
    opts = check_request("rho", fraction, args["seed"], args["min_per_class"], options)
    part = select_sampled(path, "rho", fraction, batch_rows=128, options=opts, **args)
    return whole, part


@pytest.mark.parametrize("per_class", [True, False])
@pytest.mark.parametrize("options", [{}, {"temperature": 0.3, "uniform": 0.0},
                                     {"temperature": 0.0}, {"temperature": 2.0,
                                                            "uniform": 1.0}])
def test_sampled_ids_equal_in_memory(tmp_path, per_class, options):
    path = tmp_path / "s.parquet"
    _table(path)
    whole, part = _both(path, options=options, per_class=per_class)
    assert len(whole) == len(part) > 250
    np.testing.assert_array_equal(part.sample_ids, whole.sample_ids)
    assert (part.weights == 1).all() and (whole.weights == 1).all()


@pytest.mark.parametrize("unseen", ["mean", "first"])
def test_unscored_rows_and_importance_weights_as_in_memory(tmp_path, unseen):
    path = tmp_path / "s.parquet"
    _table(path, unscored=0.3)
    options = {"reweight": True, "unseen": unseen}
    whole, part = _both(path, fraction=0.2, options=options)
    np.testing.assert_array_equal(part.sample_ids, whole.sample_ids)
    np.testing.assert_allclose(part.weights, whole.weights, rtol=1e-6)
    loss = pq.read_table(path).to_pandas().set_index("sample_id")["loss"]
    if unseen == "mean":
        assert part.weights.std() > 0.05  # the weights are not all one: reweight took effect
    else:  # 30% unscored, 20% kept: every kept row is an unscored one, all drawn alike
        assert loss.loc[part.sample_ids].isna().all() and (part.weights == 1).all()


def test_exclusions_min_per_class_and_epochs(tmp_path):
    path = tmp_path / "s.parquet"
    ids = _table(path, unscored=0.1)
    exclude = ids[1::5]  # keeps ids[1500], the class of one sample
    drawn = []
    for epoch in (5, 6):
        whole, part = _both(path, fraction=0.05, min_per_class=3, exclude=exclude,
                            epoch=epoch)
        np.testing.assert_array_equal(part.sample_ids, whole.sample_ids)
        assert not np.isin(part.sample_ids, exclude).any()
        assert len(np.intersect1d(part.sample_ids, ids[1500:1501])) == 1
        drawn.append(part.sample_ids)
    assert len(np.setdiff1d(drawn[0], drawn[1])) > 20  # a new draw every epoch


def test_select_samples_past_its_memory_budget(tmp_path):
    """``select`` takes the streamed path for rho when the table exceeds the budget (a
    broken draw there would not match the in-memory one)."""
    path = tmp_path / "s.parquet"
    _table(path, n=5000, row_group=300)
    small = select(str(path), "rho", 0.1, epoch=5, memory_budget=1000, seed=2)
    big = select(str(path), "rho", 0.1, epoch=5, seed=2)
    np.testing.assert_array_equal(small.sample_ids, big.sample_ids)
    assert "rho" in SAMPLED


def test_sampled_refuses_what_memory_refuses(tmp_path):
    path = tmp_path / "s.parquet"
    _table(path)
    with pytest.raises(ValueError, match="temperature >= 0 and uniform in"):
        select(str(path), "rho", 0.1, epoch=5, memory_budget=0,
               options={"temperature": -1.0})
    with pytest.raises(ValueError, match="unseen must be 'mean' or 'first'"):
        select(str(path), "rho", 0.1, epoch=5, memory_budget=0, options={"unseen": "last"})
