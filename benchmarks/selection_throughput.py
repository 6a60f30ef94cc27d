"""Throughput of class-balanced ACS selection on large synthetic score tables.

For each size, a synthetic score table (contract columns, 1,000 classes) is written to
Parquet once; then, each engine in a fresh process so that peak memory (RSS) is its own,
one first (cold) run and then timed runs whose median is reported as ``seconds``, the
same query everywhere (per class the floor(0.1 n + 0.5) highest ACS scores
``b * evs + (1 - b) * ds`` in float64, ties to the smaller sample_id):

* ``ours``: ``coreset_curate.select(path, "acs", 0.1, epoch=30, epochs=120)`` in memory;
* ``ours_streamed``: the same call with ``memory_budget=0``: the table read by row groups
  (``selection.streamed``);
* ``pandas``: ``pd.read_parquet`` of the columns, the score, ``groupby`` + ``nlargest``;
* ``duckdb``: one SQL query over ``read_parquet`` (``row_number()`` over the class,
  ordered by score and id);
* ``polars``: a lazy scan, the same ranking by a sort and ``int_range().over("label")``.

Every engine's ids are checked equal to the first engine's. The default engines are ours,
ours_streamed and pandas; duckdb and polars are optional benchmark extras (``pip install
duckdb polars``, the ``bench`` extra). Writes ``benchmarks/results/selection_throughput.json``
(rows before the engines were added keep their older form).

    python benchmarks/selection_throughput.py [--rows 1281167 50000000] [--repeats 3]
        [--engines ours ours_streamed duckdb polars]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from coreset_curate.common.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results" / "selection_throughput.json"
CLASSES = 1000
FRACTION, EPOCH, EPOCHS = 0.1, 30, 120


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "pyarrow": pa.__version__}


def write_table(path: Path, rows: int, seed: int = 0, chunk: int = 5_000_000) -> None:
    from coreset_curate.common.tables import SCORE_SCHEMA

    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, SCORE_SCHEMA, compression="zstd") as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            p = rng.random(n, dtype=np.float32)
            cols = {
                "sample_id": np.arange(start, start + n, dtype=np.int64),
                "label": rng.integers(0, CLASSES, n, dtype=np.int64),
                "epoch": np.full(n, EPOCH, dtype=np.int32),
                "evs": rng.random(n, dtype=np.float32) * np.float32(math.sqrt(2)),
                "ds": rng.random(n, dtype=np.float32),
                "loss": -np.log(p + np.float32(1e-6)),
                "margin": rng.normal(size=n).astype(np.float32),
                "entropy": rng.random(n, dtype=np.float32) * np.float32(math.log(CLASSES)),
                "pred": rng.integers(0, CLASSES, n, dtype=np.int64),
                "prob_label": p,
                "ref_pred": rng.integers(0, CLASSES, n, dtype=np.int64),
                "ref_prob_label": rng.random(n, dtype=np.float32),
            }
            writer.write_table(pa.table(cols, schema=SCORE_SCHEMA), row_group_size=1_000_000)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _import_readers() -> None:
    """Import the Parquet reader's lazily loaded modules before timing (both sides)."""
    import pyarrow.dataset  # noqa: F401


def _timed(fn, repeats: int) -> dict:
    """First (cold) call, then ``repeats`` warm calls; the result of the last one."""
    t0 = time.perf_counter()
    fn()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        warm.append(time.perf_counter() - t0)
    return {"cold_seconds": cold, "warm_seconds": warm, "peak_mb": _peak_mb(), "ids": result}


def run_ours(path: str, repeats: int, queue) -> None:
    from coreset_curate.selection import select

    _import_readers()
    queue.put(_timed(lambda: select(path, "acs", FRACTION, epoch=EPOCH,
                                    epochs=EPOCHS).sample_ids, repeats))


def run_ours_streamed(path: str, repeats: int, queue) -> None:
    from coreset_curate.selection import select

    _import_readers()
    queue.put(_timed(lambda: select(path, "acs", FRACTION, epoch=EPOCH, epochs=EPOCHS,
                                    memory_budget=0).sample_ids, repeats))


def _weights() -> tuple[float, float]:
    from coreset_curate.selection import beta

    b = beta("cos", EPOCH, EPOCHS)
    return b, 1 - b


def duckdb_select(path: str) -> np.ndarray:
    import duckdb

    b, rest = _weights()
    query = f"""
        WITH s AS (
            SELECT sample_id, label,
                   {b!r} * CAST(evs AS DOUBLE) + {rest!r} * CAST(ds AS DOUBLE) AS score,
                   count(*) OVER (PARTITION BY label) AS n,
                   row_number() OVER (PARTITION BY label ORDER BY
                       {b!r} * CAST(evs AS DOUBLE) + {rest!r} * CAST(ds AS DOUBLE) DESC,
                       sample_id) AS rn
            FROM read_parquet('{path}'))
        SELECT sample_id FROM s WHERE rn <= floor({FRACTION!r} * n + 0.5) ORDER BY sample_id"""
    return duckdb.sql(query).fetchnumpy()["sample_id"]


def polars_select(path: str) -> np.ndarray:
    import polars as pl

    b, rest = _weights()
    score = (pl.col("evs").cast(pl.Float64) * b + pl.col("ds").cast(pl.Float64) * rest)
    kept = (pl.scan_parquet(path).select("sample_id", "label", score.alias("score"))
            .sort(["label", "score", "sample_id"], descending=[False, True, False])
            .filter(pl.int_range(pl.len()).over("label")
                    < (pl.len().over("label") * FRACTION + 0.5).floor())
            .select("sample_id").sort("sample_id").collect())
    return kept["sample_id"].to_numpy()


def run_duckdb(path: str, repeats: int, queue) -> None:
    import duckdb  # noqa: F401

    queue.put(_timed(lambda: duckdb_select(path), repeats))


def run_polars(path: str, repeats: int, queue) -> None:
    import polars  # noqa: F401

    queue.put(_timed(lambda: polars_select(path), repeats))


def pandas_select(path: str) -> np.ndarray:
    import pandas as pd

    from coreset_curate.selection import beta

    df = pd.read_parquet(path, columns=["sample_id", "label", "evs", "ds"])
    b = beta("cos", EPOCH, EPOCHS)
    df["score"] = b * df["evs"].astype("float64") + (1 - b) * df["ds"].astype("float64")
    counts = df["label"].value_counts()
    budget = np.floor(FRACTION * counts + 0.5).astype(int)
    # nlargest keeps the first row among ties: rows are in sample_id order, as ours
    kept = df.groupby("label", group_keys=False).apply(
        lambda g: g.nlargest(int(budget[g.name]), "score"))
    return np.sort(kept["sample_id"].to_numpy())


def run_pandas(path: str, repeats: int, queue) -> None:
    import pandas  # noqa: F401

    _import_readers()
    queue.put(_timed(lambda: pandas_select(path), repeats))


def in_fresh_process(target, path: str, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(path, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__} failed with exit code {proc.exitcode}")
    return result


ENGINES = {"ours": run_ours, "ours_streamed": run_ours_streamed, "pandas": run_pandas,
           "duckdb": run_duckdb, "polars": run_polars}


def _versions(engines) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("pandas", "duckdb", "polars"):
        if name in engines:
            try:
                out[name] = version(name)
            except PackageNotFoundError:
                raise SystemExit(f"engine {name} is not installed: pip install {name}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_281_167, 50_000_000])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per size after one untimed first run (median kept)")
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINES),
                        default=["ours", "ours_streamed", "pandas"])
    parser.add_argument("--workdir", default=None, help="where the synthetic tables go")
    args = parser.parse_args()

    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    info = {**machine(), **_versions(args.engines)}
    print(f"machine: {info}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"scores_{rows}.parquet"
            t0 = time.perf_counter()
            write_table(path, rows)
            print(f"{rows:,} rows: wrote synthetic table ({path.stat().st_size / 1e6:.0f} MB) "
                  f"in {time.perf_counter() - t0:.1f} s")
            engines, first = {}, None
            for name in args.engines:
                got = in_fresh_process(ENGINES[name], str(path), args.repeats)
                first = got["ids"] if first is None else first
                engines[name] = {
                    "seconds": round(float(np.median(got["warm_seconds"])), 4),
                    "warm_seconds": [round(x, 4) for x in got["warm_seconds"]],
                    "cold_seconds": round(got["cold_seconds"], 4),
                    "peak_mb": round(got["peak_mb"], 1),
                    "same_ids": bool(np.array_equal(got["ids"], first)),
                    "selected": int(len(got["ids"]))}
                print(f"  {name}: {json.dumps(engines[name])}")
            run = {"rows": rows, "classes": CLASSES, "method": "acs", "fraction": FRACTION,
                   "engines": engines, "machine": info, "date": time.strftime("%Y-%m-%d")}
            runs.append(run)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            write_text(RESULTS, json.dumps(runs, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
