"""Atomic outputs under the worst timing: a process SIGKILLed after writing its temporary
file and before renaming it. The target is left as it was, the next run removes the stale
temporary and writes the same bytes as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from coreset_curate.common.atomic import atomic_path, stale_temporaries, write_text

ENV = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "PYTHONWARNINGS": "ignore",
       "OMP_NUM_THREADS": "1"}

# Runs the CLI with os.replace patched: renaming a file onto TARGET kills the process first,
# so the kill lands with the temporary complete on disk and the target not yet replaced.
KILL_AT_RENAME = textwrap.dedent("""
    import os, signal, sys
    target = os.path.abspath(sys.argv[1])
    real = os.replace
    def replace(src, dst, *a, **k):
        if os.path.abspath(os.fspath(dst)) == target:
            with open(os.fspath(src), "rb") as fh:
                assert len(fh.read()) > 0  # the temporary is written in full
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.replace = replace
    from coreset_curate.cli import main
    sys.exit(main(["-q", *sys.argv[2:]]))
""")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coreset_curate", "-q", *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=600)


def _killed_at_rename(target: Path, *args) -> int:
    r = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(target), *map(str, args)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    return r.returncode


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("atomic")
    from coreset_curate.tasks.classification.models import create_model

    torch.manual_seed(0)
    torch.save(create_model("small_cnn", num_classes=10, in_channels=1).state_dict(), d / "m.pt")
    assert _cli("score", "--data", "digits", "--model", "small_cnn", "--checkpoint",
                d / "m.pt", "--out", d / "s.parquet").returncode == 0
    return d


def test_select_killed_at_the_rename(digits_run, tmp_path):
    sel = ["select", "--scores", digits_run / "s.parquet", "--method", "el2n",
           "--fraction", "0.3", "--epochs", "2"]
    clean = tmp_path / "clean.parquet"
    for epoch in (0, 1):
        assert _cli(*sel, "--epoch", epoch, "--out", clean).returncode == 0
    index = tmp_path / "index.parquet"
    assert _cli(*sel, "--epoch", 0, "--out", index).returncode == 0
    old = index.read_bytes()
    code = _killed_at_rename(index, *sel, "--epoch", 1, "--out", index)
    assert code == -signal.SIGKILL
    assert index.read_bytes() == old
    stale = _temporaries(tmp_path)
    assert len(stale) == 1 and stale[0].name.startswith(".index.parquet.")
    assert stale_temporaries(index) == stale
    assert _cli(*sel, "--epoch", 1, "--out", index).returncode == 0
    assert index.read_bytes() == clean.read_bytes()
    assert _temporaries(tmp_path) == []  # the stale temporary went with the next write


def test_export_killed_at_the_rename(digits_run, tmp_path):
    assert _cli("select", "--scores", digits_run / "s.parquet", "--method", "el2n",
                "--fraction", "0.5", "--out", tmp_path / "i.parquet").returncode == 0
    exp = ["export", "--data", "digits", "--index", tmp_path / "i.parquet", "--epoch", "0"]
    assert _cli(*exp, "--out", tmp_path / "clean").returncode == 0
    out = tmp_path / "out"
    target = out / "train-00000-of-00001.parquet"
    assert _killed_at_rename(target, *exp, "--out", out) == -signal.SIGKILL
    assert not target.exists()  # no partial export under the name readers look for
    assert len(_temporaries(out)) == 1
    assert _cli(*exp, "--out", out).returncode == 0  # not --overwrite: nothing was there
    assert _temporaries(out) == []
    assert target.read_bytes() == (tmp_path / "clean" / target.name).read_bytes()


def test_train_killed_at_the_checkpoint_rename(tmp_path):
    common = ["train", "--set", "data=digits", "--set", "model=small_cnn", "--set",
              "epochs=2", "--set", "batch_size=64", "--set", "channels_last=false",
              "--set", "optimizer=adam", "--set", "lr=0.003", "--set", "num_threads=1"]
    assert _cli(*common, "--out", tmp_path / "clean").returncode == 0
    run = tmp_path / "run"
    code = _killed_at_rename(run / "last.pt", *common, "--out", run)
    assert code == -signal.SIGKILL
    assert not (run / "last.pt").exists() and len(_temporaries(run)) == 1
    assert _cli(*common, "--out", run, "--resume").returncode == 0
    assert _temporaries(run) == []
    a = torch.load(run / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "clean" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_temporaries_of_live_writers_are_kept(tmp_path):
    target = tmp_path / "t.parquet"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        mine = tmp_path / f".t.parquet.{live.pid}.abcdefgh.tmp"
        theirs = tmp_path / f".t.parquet.{dead.pid}.abcdefgh.tmp"
        other = tmp_path / f".t.parquet.x.{dead.pid}.abcdefgh.tmp"  # another target's name
        for p in (mine, theirs, other):
            p.write_bytes(b"x")
        assert stale_temporaries(target) == [theirs]
        write_text(target, "new")
        assert target.read_text() == "new"
        assert mine.exists() and other.exists() and not theirs.exists()
    finally:
        live.kill()
        live.wait()


def test_an_error_inside_the_block_leaves_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and _temporaries(tmp_path) == []
    os.umask(0o022)
    write_text(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o644
