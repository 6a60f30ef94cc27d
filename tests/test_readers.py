"""Property tests over the score-table reader: random sizes, column sets, row orders,
extra columns, NaNs, infinities and duplicate ids. The reader either returns the rows
sorted by sample_id with their values intact, or raises a TableError that names the
problem; it never returns something silently wrong."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coreset_curate.selection import load_rounds
from coreset_curate.common.tables import TableError

FLOAT_COLS = ["evs", "ds", "loss", "margin", "entropy", "prob_label"]


@st.composite
def tables(draw):
    n = draw(st.integers(0, 60))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n * 3)[:n].astype(np.int64)  # unique, in random order
    cols = {"sample_id": ids, "label": rng.integers(0, 5, n).astype(np.int64),
            "epoch": np.zeros(n, np.int32)}
    for c in draw(st.sets(st.sampled_from(FLOAT_COLS), min_size=1)):
        cols[c] = rng.random(n).astype(np.float32)
    if draw(st.booleans()):
        cols["extra_note"] = np.array([f"row {i}" for i in range(n)], dtype=object)
    defect = draw(st.sampled_from(["none", "nan", "inf", "duplicate", "negative_label"]))
    if n and defect in ("nan", "inf"):
        c = draw(st.sampled_from(sorted(set(cols) & set(FLOAT_COLS))))
        cols[c] = cols[c].copy()
        cols[c][draw(st.integers(0, n - 1))] = np.nan if defect == "nan" else np.inf
    elif n > 1 and defect == "duplicate":
        cols["sample_id"] = cols["sample_id"].copy()
        cols["sample_id"][-1] = cols["sample_id"][0]
    elif n and defect == "negative_label":
        cols["label"] = cols["label"].copy()
        cols["label"][0] = -1
    else:
        defect = "none"
    return pa.table(cols), defect


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=tables(), as_file=st.booleans())
def test_reader_sorts_or_refuses(case, as_file, tmp_path):
    table, defect = case
    source = table
    if as_file:
        source = tmp_path / "t.parquet"
        pq.write_table(table, source)
    wanted = [c for c in FLOAT_COLS if c in table.column_names]
    bad_float = defect in ("nan", "inf") and not (defect == "nan" and _nan_only_in_ds(table))
    if table.num_rows == 0 or bad_float or defect in ("duplicate", "negative_label"):
        with pytest.raises(TableError):
            load_rounds(source, wanted)
        return
    rounds = load_rounds(source, wanted)
    got = rounds.rounds[0]
    order = np.argsort(table.column("sample_id").to_numpy(), kind="stable")
    assert np.array_equal(got["sample_id"], table.column("sample_id").to_numpy()[order])
    assert np.array_equal(got["label"], table.column("label").to_numpy()[order])
    for c in wanted:
        expected = table.column(c).to_numpy()[order]
        assert np.array_equal(got[c], expected, equal_nan=True), c


def _nan_only_in_ds(table: pa.Table) -> bool:
    """ds may be null (NaN is how a null reads), so a NaN there is accepted."""
    others = [c for c in FLOAT_COLS if c in table.column_names and c != "ds"]
    return not any(np.isnan(table.column(c).to_numpy()).any() for c in others)


def test_integer_columns_that_went_through_pandas_as_floats():
    """pandas stores an integer column with missing values as floats; whole floats read
    back as the contract's integers (missing stays missing), fractional ones are refused."""
    import pandas as pd

    df = pd.DataFrame({"sample_id": [2, 0, 1], "label": [1.0, 0.0, 2.0],
                       "epoch": [0, 0, 0], "evs": [0.1, 0.2, 0.3],
                       "ref_pred": [1.0, np.nan, 2.0]})
    got = load_rounds(df, ["evs", "ref_pred"]).rounds[0]
    assert got["label"].tolist() == [0, 2, 1]
    assert np.array_equal(got["ref_pred"], [np.nan, 2.0, 1.0], equal_nan=True)
    with pytest.raises(TableError, match="'label' does not fit int64"):
        load_rounds(df.assign(label=[1.5, 0.0, 2.0]), ["evs"])
