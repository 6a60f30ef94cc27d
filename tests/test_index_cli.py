"""The index under concurrent writers, and how the command line reports errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from coreset_curate.common.index import add_to_index, epoch_rows, read_index
from coreset_curate.selection import Selection
from coreset_curate.common.tables import write_table


def _scores(path, n=60, k=3):
    rng = np.random.default_rng(0)
    table = pa.table({"sample_id": pa.array(np.arange(n), pa.int64()),
                      "label": pa.array(np.arange(n) % k, pa.int64()),
                      "epoch": pa.array(np.zeros(n, np.int32), pa.int32()),
                      "evs": pa.array(rng.random(n).astype(np.float32), pa.float32())})
    write_table(table, path)


def test_eight_select_processes_adding_epochs_lose_none(tmp_path):
    scores, index = tmp_path / "s.parquet", tmp_path / "i.parquet"
    _scores(scores)
    base = [sys.executable, "-m", "coreset_curate", "-q", "select", "--scores", str(scores),
            "--method", "el2n", "--fraction", "0.2", "--epochs", "9", "--out", str(index)]
    assert subprocess.run([*base, "--epoch", "0"], capture_output=True).returncode == 0
    env = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*base, "--epoch", str(e)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for e in range(1, 9)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * 8, [p.stderr.read().decode()[-500:] for p in procs]
    table = read_index(index)
    assert sorted(set(table.column("epoch").to_pylist())) == list(range(9))
    assert all(len(epoch_rows(table, e)[0]) == 12 for e in range(9))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no lock file left


def test_add_to_index_keeps_other_epochs_and_refuses_a_clash(tmp_path):
    path = tmp_path / "i.parquet"
    add_to_index(path, Selection(np.array([3, 1])), [0, 1], metadata={"method": "m"})
    add_to_index(path, Selection(np.array([5])), [2], metadata={"method": "m"})
    table = read_index(path)
    assert epoch_rows(table, 1)[0].tolist() == [1, 3] and epoch_rows(table, 2)[0].tolist() == [5]
    with pytest.raises(FileExistsError, match=r"already has epoch\(s\) \[2\]"):
        add_to_index(path, Selection(np.array([7])), [2], metadata={"method": "m"})


def test_a_bug_keeps_its_traceback_and_exits_1(tmp_path, monkeypatch, capsys):
    import coreset_curate.labels.noise as noise
    from coreset_curate.cli import main

    def broken(*args, **kwargs):
        raise TypeError("a bug inside the toolkit")

    monkeypatch.setattr(noise, "inject_noise", broken)
    with pytest.raises(TypeError, match="a bug inside the toolkit"):
        main(["noise", "--data", "digits", "--rate", "0.1", "--out", str(tmp_path / "l.parquet")])
    # run as a program, the same bug exits 1 with its traceback (not 2 with one line)
    code = ("import coreset_curate.labels.noise as n, sys\n"
            "def broken(*a, **k): raise KeyError('missing key')\n"
            "n.inject_noise = broken\n"
            "from coreset_curate.cli import main\n"
            f"sys.exit(main(['noise', '--data', 'digits', '--rate', '0.1', '--out', "
            f"{str(tmp_path / 'l.parquet')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "KeyError" in r.stderr


def test_unknown_ids_are_bad_input_for_the_command_line(tmp_path, capsys):
    from coreset_curate.cli import main

    index = tmp_path / "i.parquet"
    add_to_index(index, Selection(np.array([0, 99999])), [0])
    code = main(["export", "--data", "digits", "--index", str(index), "--epoch", "0",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "99999" in err[0], err


def test_score_command_calibrates_on_rows_spread_over_the_split(tmp_path, monkeypatch):
    import torch

    import coreset_curate.data as data_mod
    from coreset_curate.cli import main
    from coreset_curate.data import spread_positions
    from coreset_curate.tasks.classification.models import create_model

    ckpt = tmp_path / "fp.pt"
    torch.save(create_model("small_cnn", num_classes=10, in_channels=1).state_dict(), ckpt)
    seen = []
    monkeypatch.setattr(data_mod, "spread_positions",
                        lambda n, count: seen.append((n, count)) or spread_positions(n, count))
    assert main(["score", "--data", "digits", "--model", "small_cnn", "--checkpoint", str(ckpt),
                 "--w-bits", "4", "--a-bits", "4", "--out", str(tmp_path / "s.parquet")]) == 0
    assert seen == [(1437, 1024)]  # the float checkpoint was calibrated on spread rows

    pos = spread_positions(5000, 1024)
    assert len(pos) == 1024 and pos[0] == 0 and pos[-1] == 4999
    assert (np.diff(pos) > 0).all()
    # a class-sorted split of 10 classes of 500: every class is in the calibration rows
    assert np.unique(pos // 500).tolist() == list(range(10))
    assert spread_positions(7, 1024).tolist() == list(range(7))
