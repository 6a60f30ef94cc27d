import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreset_curate.selection import (METHODS, beta, class_budget, index_table, merge_index,
                                      select)
from coreset_curate.tables import INDEX_SCHEMA, SCORE_SCHEMA, TableError, validate_index


def score_table(labels, evs, ds, epoch=0, ids=None):
    n = len(labels)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    return pa.table({
        "sample_id": ids.astype(np.int64), "label": np.asarray(labels, np.int64),
        "epoch": np.full(n, epoch, np.int32), "evs": np.asarray(evs, np.float32),
        "ds": np.asarray(ds, np.float32), "loss": np.zeros(n, np.float32),
        "margin": np.zeros(n, np.float32), "entropy": np.zeros(n, np.float32),
        "pred": np.zeros(n, np.int64), "prob_label": np.zeros(n, np.float32),
        "ref_pred": np.zeros(n, np.int64), "ref_prob_label": np.zeros(n, np.float32),
    }, schema=SCORE_SCHEMA)


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
    t = score_table(labels, evs, rng.random(n), ids=ids)
    sel = select(t, method, fraction, epoch=1, epochs=3, seed=seed % 1000,
                 min_per_class=min_per_class)
    assert len(np.unique(sel.sample_ids)) == len(sel)
    assert set(sel.sample_ids.tolist()) <= set(ids.tolist())
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
    from coreset_curate.tables import table_metadata
    assert table_metadata(merged)["sources"] == ["a.parquet", "b.parquet"]
