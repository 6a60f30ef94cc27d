"""Selection out of core: a table read by row groups gives the in-memory path's ids."""

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coreset_curate.selection import select
from coreset_curate.selection.streamed import STREAMABLE, parse_memory, select_streamed
from coreset_curate.common.tables import TableError

METHODS = sorted(STREAMABLE)


def _table(path, n=3000, classes=7, seed=0, row_group=200, **change):
    """Scores rounded to one decimal (many ties), ids sorted with gaps, one class of a
    single sample (class `classes`), written in small row groups."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10 * n, size=n, replace=False)).astype(np.int64)
    labels = rng.integers(0, classes, n)
    labels[n // 2] = classes
    cols = {"sample_id": ids, "label": labels, "epoch": np.full(n, 3, dtype=np.int32)}
    for c in ("evs", "ds", "loss", "margin", "entropy", "max_prob"):
        cols[c] = np.round(rng.random(n), 1).astype(np.float32)
    cols.update(change)
    pq.write_table(pa.table(cols), path, row_group_size=row_group)
    return ids


def _both(path, method, **kw):
    args = dict(epoch=5, epochs=20, schedule="cos", seed=4, per_class=True, min_per_class=0,
                options={})
    args.update(kw)
    whole = select(str(path), method, args.pop("fraction", 0.1), **args)
    from coreset_curate.selection.core import check_request

    fraction = kw.get("fraction", 0.1)
    opts = check_request(method, fraction, args["seed"], args["min_per_class"], {})
    part = select_streamed(path, method, fraction, batch_rows=128,
                           **{**args, "options": opts})
    return whole, part


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("per_class", [True, False])
def test_streamed_ids_equal_in_memory(tmp_path, method, per_class):
    path = tmp_path / "s.parquet"
    _table(path)
    whole, part = _both(path, method, per_class=per_class)
    assert len(whole) > 0
    np.testing.assert_array_equal(part.sample_ids, whole.sample_ids)
    assert (part.weights == 1).all()


@pytest.mark.parametrize("method", ["acs", "random_epoch"])
def test_streamed_with_exclusion_and_min_per_class(tmp_path, method):
    path = tmp_path / "s.parquet"
    ids = _table(path)
    exclude = ids[1::5]  # keeps ids[1500], the class of one sample
    whole, part = _both(path, method, exclude=exclude, min_per_class=3, fraction=0.05)
    np.testing.assert_array_equal(part.sample_ids, whole.sample_ids)
    assert not np.isin(part.sample_ids, exclude).any()
    # the single-sample class keeps its one sample (min_per_class), as in memory
    assert len(np.intersect1d(part.sample_ids, ids[1500:1501])) == 1


def test_select_streams_past_its_memory_budget(tmp_path, caplog):
    path = tmp_path / "s.parquet"
    _table(path)
    kw = dict(epoch=5, epochs=20)
    with caplog.at_level(logging.INFO, logger="coreset_curate.selection.entry"):
        small = select(str(path), "acs", 0.2, memory_budget=1000, **kw)
    assert "row groups" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="coreset_curate.selection.entry"):
        big = select(str(path), "acs", 0.2, memory_budget=1 << 30, **kw)
    assert "row groups" not in caplog.text
    np.testing.assert_array_equal(small.sample_ids, big.sample_ids)


def test_streamed_refuses_what_memory_refuses(tmp_path):
    path = tmp_path / "nan.parquet"
    n = 3000
    evs = np.round(np.random.default_rng(1).random(n), 1).astype(np.float32)
    evs[2500] = np.nan
    _table(path, evs=evs)
    for budget in (0, 1 << 30):
        with pytest.raises(TableError, match="'evs' has .*NaN or infinite"):
            select(str(path), "acs", 0.1, epoch=5, epochs=20, memory_budget=budget)
    # ds may be missing in a table, but acs needs it while beta < 1
    ds = np.full(n, np.nan, dtype=np.float32)
    _table(path, ds=ds)
    for budget in (0, 1 << 30):
        with pytest.raises(ValueError, match="'ds' has missing values"):
            select(str(path), "acs", 0.1, epoch=5, epochs=20, memory_budget=budget)
    # random methods read no score column: a NaN evs does not matter to them
    r = select(str(path), "random_epoch", 0.1, epoch=5, memory_budget=0)
    assert len(r) > 0


def test_streamed_needs_a_sorted_table_of_one_round(tmp_path):
    path = tmp_path / "u.parquet"
    ids = np.arange(1000, dtype=np.int64)[::-1].copy()
    _table(path, n=1000, sample_id=ids)
    with pytest.raises(TableError, match="not sorted by sample_id"):
        select(str(path), "loss", 0.1, memory_budget=0, epoch=5)
    # the in-memory path sorts it itself
    assert len(select(str(path), "loss", 0.1, epoch=5)) == pytest.approx(100, abs=8)
    epochs = np.repeat(np.array([0, 3], dtype=np.int32), 500)
    _table(path, n=1000, epoch=epochs)
    with pytest.raises(TableError, match="more than one scoring round"):
        select(str(path), "loss", 0.1, memory_budget=0, epoch=5)
    _table(path, n=1000)
    with pytest.raises(TableError, match="no scoring round at or before epoch 1"):
        select(str(path), "loss", 0.1, memory_budget=0, epoch=1)


def test_memory_sizes_parse():
    assert parse_memory("1500M") == 1500 << 20
    assert parse_memory("2G") == parse_memory("2GiB") == 2 << 30
    assert parse_memory("4096") == 4096
    for bad in ("-1G", "lots", "0", ""):
        with pytest.raises(ValueError, match="memory budget must be a positive size"):
            parse_memory(bad)


def test_cli_select_with_a_memory_budget_writes_the_same_index(tmp_path, capsys):
    from coreset_curate.cli import main
    from coreset_curate.common.index import epoch_rows, read_index

    path = tmp_path / "s.parquet"
    _table(path)
    common = ["select", "--scores", str(path), "--method", "acs", "--fraction", "0.1",
              "--epoch", "4", "--epochs", "20"]
    assert main([*common, "--memory-budget", "1K", "--out", str(tmp_path / "a.parquet")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.parquet")]) == 0
    a, _ = epoch_rows(read_index(tmp_path / "a.parquet"), 4)
    b, _ = epoch_rows(read_index(tmp_path / "b.parquet"), 4)
    assert len(a) > 250
    np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit) as err:
        main([*common, "--memory-budget", "plenty", "--out", str(tmp_path / "c.parquet")])
    assert err.value.code == 2
    assert "memory budget must be a positive size" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_keeps_the_best_of_each_group_with_ties_to_the_smaller_id(seed):
    """Many small batches (so the pending rows are merged many times), scores with heavy
    ties and -inf, groups whose budget is 0, 1, their whole size or in between; the result
    is checked against a full sort by (group, -score, id)."""
    from coreset_curate.selection.topk import TopK

    rng = np.random.default_rng(seed)
    n, groups = 5000, 9
    ids = np.sort(rng.choice(50 * n, size=n, replace=False)).astype(np.int64)
    group = rng.integers(0, groups, n)
    score = np.round(rng.random(n) * 4) / 4  # five values: ties everywhere
    score[rng.random(n) < 0.05] = -np.inf
    extra = rng.random(n)
    sizes = np.bincount(group, minlength=groups)
    budget = np.array([0, 1, sizes[2], 3, 40, 100, 250, 7, sizes[8] - 1], dtype=np.int64)
    best = TopK(budget, batch_rows=16)  # pending merged every 64 rows
    for lo in range(0, n, 37):
        sl = slice(lo, lo + 37)
        best.add(ids[sl], group[sl], score[sl], extra[sl])
    got_ids, got_group, got_score, got_extra = best.result()
    order = np.lexsort((ids, -score, group))
    rank = np.arange(n) - np.searchsorted(group[order], group[order])
    want = np.sort(order[rank < budget[group[order]]])
    np.testing.assert_array_equal(got_ids, ids[want])
    np.testing.assert_array_equal(got_group, group[want])
    np.testing.assert_array_equal(got_score, score[want])
    np.testing.assert_array_equal(got_extra, extra[want])


def test_streamed_selection_loads_no_torch(tmp_path):
    """Out of core, selection reads Parquet with pyarrow and scores with numpy: torch (half
    a gigabyte of memory) is not imported, for top-k, sampled and exclusions alike."""
    import subprocess
    import sys

    path = tmp_path / "s.parquet"
    ref = np.random.default_rng(3).random(3000).astype(np.float32)
    ids = _table(path, ref_prob_label=ref)
    code = (
        "import sys\n"
        "from coreset_curate.selection import select\n"
        f"p = {str(path)!r}\n"
        "a = select(p, 'acs', 0.1, epoch=5, epochs=20, memory_budget=0)\n"
        "b = select(p, 'rho', 0.1, epoch=5, memory_budget=0)\n"
        f"c = select(p, 'loss', 0.1, epoch=5, memory_budget=0, exclude={ids[:50].tolist()})\n"
        "assert len(a) and len(b) and len(c)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("statistics", [True, False])
def test_scoring_round_from_statistics_or_the_column(tmp_path, statistics):
    """Pass 1 takes the round's epoch from the row groups' statistics; a file written
    without them has its epoch column read: the same checks and the same ids either way."""
    n = 1000
    rng = np.random.default_rng(5)
    cols = {"sample_id": np.arange(n, dtype=np.int64), "label": rng.integers(0, 4, n),
            "epoch": np.full(n, 3, dtype=np.int32),
            "loss": np.round(rng.random(n), 2).astype(np.float32)}
    path = tmp_path / "s.parquet"

    def write(**change):
        pq.write_table(pa.table({**cols, **change}), path, row_group_size=300,
                       write_statistics=statistics)

    write()
    streamed = select(str(path), "loss", 0.1, memory_budget=0, epoch=5)
    np.testing.assert_array_equal(streamed.sample_ids,
                                  select(str(path), "loss", 0.1, epoch=5).sample_ids)
    with pytest.raises(TableError, match="no scoring round at or before epoch 2"):
        select(str(path), "loss", 0.1, memory_budget=0, epoch=2)
    two = np.full(n, 3, dtype=np.int32)
    two[700] = 4  # inside the third row group
    write(epoch=two)
    with pytest.raises(TableError, match="more than one scoring round"):
        select(str(path), "loss", 0.1, memory_budget=0, epoch=5)
    # an epoch column of the wrong type is read, and refused as in memory
    write(epoch=np.full(n, "3"))
    for budget in (0, None):
        with pytest.raises(TableError, match="column 'epoch' has type string"):
            select(str(path), "loss", 0.1, memory_budget=budget, epoch=5)
