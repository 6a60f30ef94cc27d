import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from coreset_curate.data import default_transforms, load_data
from coreset_curate.scoring.extract import extract_scores
from coreset_curate.tasks.classification.models import create_model
from coreset_curate.quant import quantize_model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A float and a W4A4 small CNN on digits, saved as weights-only state dicts."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    data = load_data("digits", "train")
    _, eval_tf = default_transforms(data)
    fp = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    torch.save(fp.state_dict(), d / "fp.pt")
    student = create_model("small_cnn", num_classes=10, in_channels=1)
    student.load_state_dict(fp.state_dict())
    quantize_model(student, 4, 4, calibration=[eval_tf(data.images[:256])])
    torch.save(student.state_dict(), d / "student.pt")
    return d, data, eval_tf, student.eval(), fp


def _data_columns(path):
    t = pq.read_table(path)
    return t.replace_schema_metadata(None)


def test_shard_size_does_not_change_the_table(checkpoints, tmp_path):
    _, data, eval_tf, student, fp = checkpoints
    a = extract_scores(student, data, tmp_path / "a.parquet", reference=fp, transform=eval_tf,
                       shard_rows=100)
    b = extract_scores(student, data, tmp_path / "b.parquet", reference=fp, transform=eval_tf,
                       shard_rows=5000)
    assert _data_columns(a).equals(_data_columns(b))
    assert not (tmp_path / ".a.parquet.parts").exists()  # parts are cleaned up
    with pytest.raises(FileExistsError, match="overwrite"):
        extract_scores(student, data, a, transform=eval_tf)


def test_score_dataset_returns_the_table_or_writes_it(checkpoints, tmp_path):
    """The one entry point: without out= the table, with out= the same rows written in
    shards (extra scores included), and a file-only option without out= is refused."""
    from torch.utils.data import TensorDataset

    from coreset_curate import score_dataset

    _, data, eval_tf, student, fp = checkpoints
    table = score_dataset(student, data, fp, transform=eval_tf, scores=["entropy"])
    path = score_dataset(student, data, fp, out=tmp_path / "s.parquet", transform=eval_tf,
                         scores=["entropy"], shard_rows=300)
    written = pq.read_table(path)
    assert "entropy" in table.column_names and written.num_rows == len(data)
    assert written.select(table.column_names).replace_schema_metadata(None).equals(
        table.replace_schema_metadata(None))
    with pytest.raises(ValueError, match="shard_rows, world_size apply to a written table"):
        score_dataset(student, data, fp, transform=eval_tf, shard_rows=100, world_size=2)
    with pytest.raises(TypeError, match="not a TensorDataset"):
        score_dataset(student, TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4).long()),
                      out=tmp_path / "t.parquet")
    with pytest.raises(TypeError, match="needs transform="):
        score_dataset(student, data, out=tmp_path / "u.parquet")
    assert not (tmp_path / "t.parquet").exists() and not (tmp_path / "u.parquet").exists()


def _cli_args(d, out, shard_rows=200):
    return ["score", "--data", "digits", "--model", "small_cnn", "--checkpoint",
            str(d / "student.pt"), "--w-bits", "4", "--a-bits", "4", "--reference",
            str(d / "fp.pt"), "--out", str(out), "--shard-rows", str(shard_rows),
            "--batch-size", "64"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    import coreset_curate.scoring.extract as ex
    real, calls = ex.score_table, []
    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the 4th shard
        return real(*a, **k)
    ex.score_table = dying
    from coreset_curate.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_run_resumes_to_the_same_table(checkpoints, tmp_path):
    d = checkpoints[0]
    env = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "PYTHONWARNINGS": "ignore"}
    full = tmp_path / "full.parquet"
    args = _cli_args(d, full)
    r = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    parts = tmp_path / ".full.parquet.parts"
    done = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert done == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert not full.exists() and not list(parts.glob("*.tmp"))
    r = subprocess.run([sys.executable, "-m", "coreset_curate", "-v", *args], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "scored 5 shards (3 already done)" in r.stderr  # 1437 rows / 200 = 8 shards
    clean = tmp_path / "clean.parquet"
    r = subprocess.run([sys.executable, "-m", "coreset_curate", *_cli_args(d, clean)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _data_columns(full).equals(_data_columns(clean))


def test_two_gloo_ranks_give_the_same_table_as_one(checkpoints, tmp_path):
    d = checkpoints[0]
    env = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    one = tmp_path / "one.parquet"
    two = tmp_path / "two.parquet"
    # 1437 rows in shards of 300: 5 shards, so the ranks get 3 and 2
    r = subprocess.run([sys.executable, "-m", "coreset_curate", *_cli_args(d, one, 300)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "coreset_curate", *_cli_args(d, two, 300)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _data_columns(one), _data_columns(two)
    assert b.num_rows == 1437
    assert np.array_equal(b.column("sample_id").to_numpy(), np.arange(1437))
    assert a.equals(b)
