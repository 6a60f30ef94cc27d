"""Crash safety: commands killed with SIGKILL at random moments, then run again, end with
results identical to an uninterrupted run; a killed command leaves either the old output
or none, never a partial one. (``score`` has its own kill test in test_extract.py.)"""

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

ENV = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "PYTHONWARNINGS": "ignore",
       "OMP_NUM_THREADS": "1"}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "coreset_curate", "-q", *map(str, args)]


def _run(*args):
    r = subprocess.run(_cli(*args), env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def _kill_after(args, seconds: float) -> int:
    """Start the command, SIGKILL it after ``seconds`` (if still running); its exit code."""
    p = subprocess.Popen(_cli(*args), env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return p.returncode


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def big_scores(tmp_path_factory):
    """Two scoring rounds of 400,000 samples: selection takes long enough to be killed in."""
    d = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(0)
    n = 400_000
    for epoch in (0, 4):
        cols = {"sample_id": np.arange(n), "label": rng.integers(0, 100, n),
                "epoch": np.full(n, epoch, np.int32)}
        for c in ("evs", "ds", "loss", "margin", "entropy", "prob_label"):
            cols[c] = rng.random(n).astype(np.float32)
        cols["pred"] = cols["label"]
        cols["ref_pred"] = cols["label"]
        cols["ref_prob_label"] = rng.random(n).astype(np.float32)
        pq.write_table(pa.table(cols), d / f"epoch_{epoch}.parquet")
    return d


def test_killed_select_leaves_the_old_index_and_resumes_identically(big_scores, tmp_path):
    rounds = [big_scores / "epoch_0.parquet", big_scores / "epoch_4.parquet"]
    sel = ["select", "--scores", *rounds, "--method", "acs", "--fraction", "0.1",
           "--epochs", "8", "--reselect-every", "4"]
    # uninterrupted: epoch 0 then epoch 4 added to the same index
    clean = tmp_path / "clean.parquet"
    _run(*sel, "--epoch", "0", "--out", clean)
    _run(*sel, "--epoch", "4", "--out", clean)
    # the same again is byte-identical (no creation time in an index)
    again = tmp_path / "again.parquet"
    _run(*sel, "--epoch", "0", "--out", again)
    _run(*sel, "--epoch", "4", "--out", again)
    assert again.read_bytes() == clean.read_bytes()
    # killed while adding epoch 4, at random moments: the index is the old one or the new one
    index = tmp_path / "index.parquet"
    _run(*sel, "--epoch", "0", "--out", index)
    old = index.read_bytes()
    rnd = random.Random(0)
    killed = 0
    for _ in range(3):
        code = _kill_after([*sel, "--epoch", "4", "--out", index], rnd.uniform(0.5, 3.0))
        assert index.read_bytes() in (old, clean.read_bytes())
        # (a kill between writing the temporary and renaming it leaves the temporary: the
        # next write removes it, checked below and in test_atomic.py)
        killed += code == -signal.SIGKILL  # (a kill may land just after the rename)
        if index.read_bytes() != old:
            break
    assert killed >= 1  # at least one kill landed before the command finished
    if index.read_bytes() == old:
        _run(*sel, "--epoch", "4", "--out", index)
    assert index.read_bytes() == clean.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_killed_export_resumes_identically(tmp_path):
    scores = tmp_path / "s.parquet"
    torch.manual_seed(0)
    from coreset_curate.tasks.classification.models import create_model

    torch.save(create_model("small_cnn", num_classes=10, in_channels=1).state_dict(),
               tmp_path / "m.pt")
    _run("score", "--data", "digits", "--model", "small_cnn", "--checkpoint", tmp_path / "m.pt",
         "--out", scores)
    _run("select", "--scores", scores, "--method", "el2n", "--fraction", "0.5", "--out",
         tmp_path / "i.parquet")
    exp = ["export", "--data", "digits", "--index", tmp_path / "i.parquet", "--epoch", "0"]
    _run(*exp, "--out", tmp_path / "clean")
    out = tmp_path / "out"
    code = _kill_after([*exp, "--out", out], 1.5)
    assert code in (0, -signal.SIGKILL)
    if code != 0:  # nothing or nothing partial: the folder holds no parquet yet
        assert not out.exists() or not list(out.glob("*.parquet"))
    _run(*exp, "--out", out, "--overwrite")
    assert _files(out) == _files(tmp_path / "clean")


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    common = ["--set", "data=digits", "--set", "model=small_cnn", "--set", "epochs=6",
              "--set", "batch_size=64", "--set", "channels_last=false", "--set",
              "optimizer=adam", "--set", "lr=0.003", "--set", "num_threads=1"]
    _run("train", *common, "--out", tmp_path / "clean")
    run = tmp_path / "run"
    rnd = random.Random(1)
    kills = 0
    for _ in range(6):  # kill at random moments until the run gets through
        code = _kill_after(["train", *common, "--out", run, "--resume"], rnd.uniform(2.0, 5.0))
        kills += code == -signal.SIGKILL
        if code == 0:
            break
    else:
        _run("train", *common, "--out", run, "--resume")
    assert kills >= 1
    assert not list(run.rglob("*.tmp"))  # stale temporaries of killed runs were removed
    a = torch.load(run / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "clean" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # every epoch was logged once, in order, whatever the kills interrupted
    epochs = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [int(e.split('"epoch": ')[1].split(",")[0]) for e in epochs] == list(range(6))
