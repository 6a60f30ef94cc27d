import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreset_curate.common.index import index_table, merge_index
from coreset_curate.selection import METHODS, beta, class_budget, select
from coreset_curate.common.tables import INDEX_SCHEMA, SCORE_SCHEMA, TableError, validate_index


def score_table(labels, evs, ds, epoch=0, ids=None, extra=True, seed=0):
    n = len(labels)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    table = pa.table({
        "sample_id": ids.astype(np.int64), "label": np.asarray(labels, np.int64),
        "epoch": np.full(n, epoch, np.int32), "evs": np.asarray(evs, np.float32),
        "ds": np.asarray(ds, np.float32), "loss": np.zeros(n, np.float32),
        "margin": np.zeros(n, np.float32), "entropy": np.zeros(n, np.float32),
        "pred": np.zeros(n, np.int64), "prob_label": np.zeros(n, np.float32),
        "ref_pred": np.zeros(n, np.int64), "ref_prob_label": np.zeros(n, np.float32),
    }, schema=SCORE_SCHEMA)
    if extra:  # columns beyond the contract that some methods read
        rng = np.random.default_rng(seed)
        table = table.append_column("max_prob", pa.array(rng.random(n).astype(np.float32)))
        emb = rng.normal(size=(n, 4)).astype(np.float16)
        table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(
            pa.array(emb.reshape(-1)), 4))
    return table


def random_table(n=500, k=5, seed=0, epoch=0):
    rng = np.random.default_rng(seed)
    return score_table(rng.integers(0, k, n), rng.random(n), rng.random(n), epoch,
                       ids=rng.permutation(10 * n)[:n])


def reference_acs(table, fraction, epoch, epochs, b, per_class):
    """Direct computation of the formula with a plain loop over classes."""
    df = table.to_pandas()
    df["s"] = b * df.evs.astype(np.float64) + (1 - b) * df.ds.astype(np.float64)
    df = df.sort_values(["s", "sample_id"], ascending=[False, True])
    if not per_class:
        return sorted(df.sample_id.head(int(math.floor(fraction * len(df) + 0.5))))
    keep = []
    for c in sorted(df.label.unique()):
        part = df[df.label == c]
        keep += part.sample_id.head(int(math.floor(fraction * len(part) + 0.5))).tolist()
    return sorted(keep)


def test_schedules_by_hand():
    assert beta("cos", 0, 10) == 1.0
    assert beta("cos", 5, 10) == pytest.approx(math.cos(math.pi / 4))
    assert beta("cos2", 5, 10) == pytest.approx(0.5)
    assert beta("linear", 3, 10) == pytest.approx(0.7)
    assert beta("evs", 9, 10) == 1.0 and beta("ds", 0, 10) == 0.0
    with pytest.raises(ValueError, match="past the run's end"):
        beta("cos", 10, 10)
    with pytest.raises(ValueError, match="unknown schedule"):
        beta("cosine", 1, 10)


@pytest.mark.parametrize("schedule", ["cos", "cos2", "linear", "evs", "ds"])
@pytest.mark.parametrize("epoch", [0, 3, 7, 9])
@pytest.mark.parametrize("per_class", [True, False])
def test_acs_equals_the_formula(schedule, epoch, per_class):
    table = random_table(seed=epoch)
    b = beta(schedule, epoch, 10)
    got = select(table, "acs", 0.23, epoch=epoch, epochs=10, schedule=schedule,
                 per_class=per_class)
    assert got.sample_ids.tolist() == reference_acs(table, 0.23, epoch, 10, b, per_class)
    assert (got.weights == 1).all()


def test_small_case_by_hand():
    # class 0: ids 0..3, class 1: ids 4..5; at epoch 0 (cos) only EVS counts
    t = score_table([0, 0, 0, 0, 1, 1], [0.1, 0.9, 0.5, 0.9, 0.2, 0.3], [1, 0, 0, 0, 0, 1])
    assert select(t, "acs", 0.5, epoch=0, epochs=4).sample_ids.tolist() == [1, 3, 5]
    # a tie between ids 1 and 3 goes to the smaller id
    assert select(t, "acs", 0.25, epoch=0, epochs=4).sample_ids.tolist() == [1, 5]
    # DS only: ids 0 (class 0) and 5 (class 1) have ds = 1
    assert select(t, "acs", 0.25, epoch=0, epochs=4, schedule="ds").sample_ids.tolist() == [0, 5]
    # rounding: 0.25 * 2 = 0.5 rounds up to 1 sample of class 1
    assert class_budget(np.array([4, 2, 1]), 0.25).tolist() == [1, 1, 0]
    assert class_budget(np.array([4, 2, 1]), 0.25, min_per_class=1).tolist() == [1, 1, 1]


def test_latest_round_at_or_before_the_epoch_is_used():
    r0 = score_table([0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], epoch=0)
    r5 = score_table([0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], epoch=5)
    assert select([r0, r5], "el2n", 0.25, epoch=4).sample_ids.tolist() == [0]
    assert select([r0, r5], "el2n", 0.25, epoch=5).sample_ids.tolist() == [3]
    with pytest.raises(TableError, match="no scoring round at or before epoch 2"):
        select([r5], "el2n", 0.25, epoch=2)


def test_random_is_one_shot_and_random_epoch_is_redrawn():
    t = random_table(1000)
    a = select(t, "random", 0.1, epoch=0, seed=3).sample_ids
    b = select(t, "random", 0.1, epoch=7, seed=3).sample_ids
    c = select(t, "random_epoch", 0.1, epoch=0, seed=3).sample_ids
    d = select(t, "random_epoch", 0.1, epoch=7, seed=3).sample_ids
    assert np.array_equal(a, b) and not np.array_equal(c, d)
    assert np.array_equal(d, select(t, "random_epoch", 0.1, epoch=7, seed=3).sample_ids)
    assert not np.array_equal(a, select(t, "random", 0.1, seed=4).sample_ids)
    # row order of the table does not matter
    shuffled = t.take(np.random.default_rng(0).permutation(t.num_rows))
    assert np.array_equal(d, select(shuffled, "random_epoch", 0.1, epoch=7, seed=3).sample_ids)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       fraction=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(sorted(METHODS)), ties=st.booleans(),
       min_per_class=st.integers(0, 2))
def test_every_method_returns_valid_unique_ids_of_the_right_count(sizes, fraction, seed, method,
                                                                  ties, min_per_class):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = len(labels)
    evs = rng.integers(0, 3, n) / 2 if ties else rng.random(n)
    ids = rng.permutation(5 * n)[:n]
    t = score_table(labels, evs, rng.random(n), ids=ids, seed=seed)
    sel = select(t, method, fraction, epoch=1, epochs=3, seed=seed % 1000,
                 min_per_class=min_per_class)
    assert len(np.unique(sel.sample_ids)) == len(sel)
    assert set(sel.sample_ids.tolist()) <= set(ids.tolist())
    assert np.isfinite(sel.weights).all() and (sel.weights > 0).all()
    if not METHODS[method].exact_size:
        return
    expected = class_budget(np.array(sizes), fraction, min_per_class)
    picked = pd.Series(labels, index=ids).loc[sel.sample_ids].value_counts()
    assert [int(picked.get(c, 0)) for c in range(len(sizes))] == expected.tolist()


@pytest.mark.parametrize("kwargs,match", [
    ({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"),
    ({"method": "best"}, "unknown method 'best'"), ({"epoch": 10, "epochs": 10}, "past"),
    ({"schedule": "exp"}, "unknown schedule"), ({"seed": -1}, "seed"),
])
def test_bad_requests_are_refused(kwargs, match):
    args = {"method": "acs", "fraction": 0.1, "epoch": 0, "epochs": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        select(random_table(), args.pop("method"), args.pop("fraction"), **args)


def test_acs_without_reference_scores_says_so():
    t = random_table()
    t = t.set_column(t.schema.get_field_index("ds"), "ds", pa.nulls(t.num_rows, pa.float32()))
    with pytest.raises(ValueError, match="reference"):
        select(t, "acs", 0.1, epoch=3, epochs=10)
    assert len(select(t, "acs", 0.1, epoch=0, epochs=10)) > 0  # beta = 1 needs EVS only


def test_index_table_follows_the_contract_and_merges():
    t = random_table()
    sels = {e: select(t, "random_epoch", 0.1, epoch=e, seed=1) for e in range(3)}
    idx = index_table(sels, metadata={"method": "random_epoch", "sources": ["a.parquet"]})
    assert idx.schema.remove_metadata().equals(INDEX_SCHEMA)
    validate_index(idx)
    assert idx.column("epoch").to_numpy().tolist() == sorted(idx.column("epoch").to_numpy())
    redo = index_table({1: select(t, "random", 0.2, seed=1)}, metadata={"sources": ["b.parquet"]})
    merged = merge_index(idx, redo)
    counts = pd.Series(merged.column("epoch").to_numpy()).value_counts().sort_index().tolist()
    assert counts == [len(sels[0]), len(select(t, "random", 0.2, seed=1)), len(sels[2])]
    from coreset_curate.common.tables import table_metadata
    assert table_metadata(merged)["sources"] == ["a.parquet", "b.parquet"]


def _with(table, name, values):
    return table.set_column(table.schema.get_field_index(name), name,
                            pa.array(np.asarray(values), table.schema.field(name).type))


def test_score_methods_pick_the_hard_end_by_hand():
    # one class of 4; fraction 0.5 keeps 2
    t = score_table([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], extra=True)
    assert select(_with(t, "loss", [3, 1, 2, 0]), "loss", 0.5).sample_ids.tolist() == [0, 2]
    assert select(_with(t, "entropy", [0, 5, 4, 1]), "entropy", 0.5).sample_ids.tolist() == [1, 2]
    assert select(_with(t, "margin", [2, -1, 0.5, 3]), "margin", 0.5).sample_ids.tolist() == [1, 2]
    t2 = t.set_column(t.schema.get_field_index("max_prob"), "max_prob",
                      pa.array(np.array([0.9, 0.3, 0.99, 0.4], np.float32)))
    assert select(t2, "least_confidence", 0.5).sample_ids.tolist() == [1, 3]


def test_forgetting_counts_transitions_across_rounds():
    labels = [0, 0, 0, 0]
    # per round predictions: sample 0 always right; 1 right->wrong->right->wrong (2 events);
    # 2 right->wrong (1 event); 3 never right (ranks above all)
    preds = [[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]
    rounds = [_with(score_table(labels, [0] * 4, [0] * 4, epoch=e), "pred", p)
              for e, p in enumerate(preds)]
    assert select(rounds, "forgetting", 0.5, epoch=3).sample_ids.tolist() == [1, 3]
    assert select(rounds, "forgetting", 0.75, epoch=3).sample_ids.tolist() == [1, 2, 3]
    # only the rounds up to the epoch count: at epoch 1, samples 1 and 2 have one event each
    assert select(rounds, "forgetting", 0.25, epoch=1).sample_ids.tolist() == [3]
    assert select(rounds, "forgetting", 0.75, epoch=1).sample_ids.tolist() == [1, 2, 3]


def test_ccs_drops_the_hardest_and_covers_the_score_range():
    n = 1000
    evs = np.linspace(0, 1, n)
    t = score_table(np.zeros(n, int), evs, evs)
    sel = select(t, "ccs", 0.2, options={"hard_cut": 0.1, "bins": 10})
    assert len(sel) == 200
    picked = evs[sel.sample_ids]
    assert picked.max() < 0.9 + 1e-9  # the hardest 10% are gone
    hist = np.histogram(picked, bins=9, range=(0, 0.9))[0]
    assert hist.min() >= 15  # every part of the remaining range is covered
    with pytest.raises(ValueError, match="has no option"):
        select(t, "ccs", 0.2, options={"cut": 0.1})


def test_moderate_keeps_samples_near_the_median_distance():
    rng = np.random.default_rng(0)
    n = 200
    t = score_table(np.zeros(n, int), np.zeros(n), np.zeros(n), extra=False)
    radius = np.linspace(0.1, 10, n)
    direction = rng.normal(size=(n, 4))
    emb = (direction / np.linalg.norm(direction, axis=1, keepdims=True)) * radius[:, None]
    emb -= emb.mean(axis=0)  # centre of the class at the origin (up to the shift)
    t = t.append_column("embedding", pa.FixedSizeListArray.from_arrays(
        pa.array(emb.astype(np.float32).reshape(-1)), 4))
    sel = select(t, "moderate", 0.1)
    d = np.linalg.norm(emb - emb.mean(axis=0), axis=1)
    far = np.abs(d - np.median(d))
    assert far[sel.sample_ids].max() <= np.sort(far)[len(sel) - 1] + 1e-4


def test_kcenter_spreads_over_clusters():
    # four tight clusters; k-center with k = 4 takes one point from each
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    rng = np.random.default_rng(1)
    emb = np.repeat(centres, 25, axis=0) + rng.normal(scale=0.1, size=(100, 2)).astype(np.float32)
    t = score_table(np.zeros(100, int), np.zeros(100), np.zeros(100), extra=False)
    t = t.append_column("embedding", pa.FixedSizeListArray.from_arrays(
        pa.array(emb.reshape(-1)), 2))
    sel = select(t, "kcenter", 0.04, seed=5)
    assert sorted(set((sel.sample_ids // 25).tolist())) == [0, 1, 2, 3]


def test_infobatch_prunes_only_low_loss_samples_and_reweights():
    n = 4000
    rng = np.random.default_rng(0)
    loss = rng.random(n)
    t = _with(score_table(np.zeros(n, int), np.zeros(n), np.zeros(n)), "loss", loss)
    sel = select(t, "infobatch", 1.0, epoch=2, epochs=10, options={"prune_ratio": 0.5})
    kept = np.zeros(n, bool)
    kept[sel.sample_ids] = True
    low = loss < loss.mean()
    assert kept[~low].all()  # high-loss samples are never dropped
    assert abs(kept[low].mean() - 0.5) < 0.05
    w = sel.weights[low[sel.sample_ids]]
    assert np.allclose(w, 2.0) and np.allclose(sel.weights[~low[sel.sample_ids]], 1.0)
    full = select(t, "infobatch", 1.0, epoch=9, epochs=10)  # annealing: the full data
    assert len(full) == n and (full.weights == 1).all()


def test_infobatch_keeps_rows_without_a_loss_and_leaves_them_out_of_the_mean():
    # training-step rounds: rows not trained on yet have no loss (NaN)
    n = 1000
    loss = np.concatenate([np.full(500, np.nan), np.linspace(0.0, 1.0, 500)])
    t = _with(score_table(np.zeros(n, int), np.zeros(n), np.zeros(n)), "loss", loss)
    sel = select(t, "infobatch", 1.0, epoch=1, epochs=10, options={"prune_ratio": 0.9})
    kept = np.zeros(n, bool)
    kept[sel.sample_ids] = True
    assert kept[:500].all()  # unseen: kept, weight 1
    assert np.allclose(sel.weights[sel.sample_ids < 500], 1.0)
    low = np.zeros(n, bool)
    low[500:] = loss[500:] < 0.5  # the mean of the scored rows only
    assert kept[500:][~low[500:]].all()
    assert 0.05 < kept[low].mean() < 0.16  # 90% of the low-loss rows dropped
    nothing = _with(score_table(np.zeros(n, int), np.zeros(n), np.zeros(n)), "loss",
                    np.full(n, np.nan))
    assert len(select(nothing, "infobatch", 1.0, epoch=1, epochs=10)) == n  # first epoch


def test_score_files_are_read_by_path_with_only_the_needed_columns(tmp_path):
    import pyarrow.parquet as pq

    t = random_table(300)
    path = tmp_path / "s.parquet"
    pq.write_table(t, path)
    a = select(str(path), "acs", 0.1, epoch=2, epochs=10)
    b = select(t, "acs", 0.1, epoch=2, epochs=10)
    assert np.array_equal(a.sample_ids, b.sample_ids)
    with pytest.raises(FileNotFoundError, match="not found"):
        select(str(tmp_path / "nope.parquet"), "acs", 0.1, epoch=0, epochs=10)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(TableError, match="not a readable Parquet"):
        select(str(tmp_path / "bad.parquet"), "acs", 0.1, epoch=0, epochs=10)


def test_bad_tables_are_refused():
    t = random_table(50)
    with pytest.raises(TableError, match="NaN"):
        select(_with(t, "evs", np.r_[np.nan, np.zeros(49)]), "el2n", 0.1)
    dup = _with(t, "sample_id", np.r_[0, 0, np.arange(2, 50)])
    with pytest.raises(TableError, match="duplicate sample_id"):
        select(dup, "el2n", 0.1)
    with pytest.raises(TableError, match="lacks column"):
        select(t.drop_columns(["label"]), "el2n", 0.1)
    with pytest.raises(TableError, match="type"):
        select(t.set_column(3, "evs", pa.array(["x"] * 50)), "el2n", 0.1)
