import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import coreset_curate
from coreset_curate.cli import main
from coreset_curate.demo import DemoConfig, run_demo
from coreset_curate.tables import (INDEX_SCHEMA, SCORE_SCHEMA, table_metadata, validate_index,
                                   validate_scores)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(fp_epochs=10, epochs=4, reselect_every=2, fraction=0.2, train_limit=400)
    return out, cfg, run_demo(out, cfg)


def test_demo_tables_follow_the_contracts(demo_run):
    out, cfg, summary = demo_run
    scores = pq.read_table(out / "scores.parquet")
    index = pq.read_table(out / "index.parquet")
    assert pa.schema(list(scores.schema)[: len(SCORE_SCHEMA)]).remove_metadata().equals(
        SCORE_SCHEMA)
    assert index.schema.remove_metadata().equals(INDEX_SCHEMA)
    validate_scores(scores)
    validate_index(index)
    # one row per sample per round, rounds at epochs 0 and 2
    assert scores.num_rows == 2 * 400
    assert sorted(set(scores.column("epoch").to_pylist())) == [0, 2]
    assert scores.column("ds").null_count == 0
    # every epoch has a 20% class-balanced subset of the scored samples
    epochs = index.column("epoch").to_numpy()
    assert sorted(set(epochs.tolist())) == [0, 1, 2, 3]
    ids = index.column("sample_id").to_numpy()
    assert set(ids.tolist()) <= set(scores.column("sample_id").to_pylist())
    per_epoch = np.bincount(epochs)
    assert (np.abs(per_epoch - 80) <= 5).all()
    assert np.array_equal(ids[epochs == 0], ids[epochs == 1])  # R = 2: reused until re-selection
    meta = table_metadata(index)
    assert (meta["method"], meta["R"], meta["epochs"], meta["fraction"]) == ("acs", 2, 4, 0.2)
    assert table_metadata(scores)["w_bits"] == 4
    assert summary["fp_top1"] > 80  # the float model really learned the digits
    assert json.loads((out / "summary.json").read_text())["index_rows"] == index.num_rows


def test_demo_audit_finds_its_planted_label_noise(demo_run):
    out, cfg, summary = demo_run
    from coreset_curate.noise import read_labels

    ids, noisy, true, meta = read_labels(out / "qat" / "labels.parquet")
    assert (noisy != true).sum() == round(0.1 * 400) and meta["rate"] == 0.1
    # the scores were made on the noisy labels
    scores = pq.read_table(out / "scores.parquet")
    last = scores.filter(pa.compute.equal(scores.column("epoch"), 2))
    assert np.array_equal(last.column("label").to_numpy(), noisy)
    a = summary["audit"]
    assert a["planted"] == 40
    # most flags are planted flips and most flips are flagged (a random flag set of the
    # same size would have precision near 0.1)
    assert a["precision"] > 0.6 and a["recall"] > 0.6 and a["auroc"] > 0.9
    page = (out / "audit" / "report.html").read_text()
    assert "Noise audit" in page and "Against the true labels" in page
    audit_table = pq.read_table(out / "audit" / "audit.parquet")
    assert audit_table.num_rows == 400


def test_demo_refuses_to_overwrite(demo_run):
    out, cfg, _ = demo_run
    before = (out / "index.parquet").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        run_demo(out, cfg)
    assert (out / "index.parquet").read_bytes() == before


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "coreset_curate", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_version_and_help():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"coreset-curate {coreset_curate.__version__}"
    r = _cli("--help")
    assert r.returncode == 0 and "demo" in r.stdout


def test_cli_demo_end_to_end(tmp_path):
    r = _cli("demo", "--out", str(tmp_path), "--fp-epochs", "2", "--epochs", "2",
             "--reselect-every", "1", "--fraction", "0.3")
    assert r.returncode == 0, r.stderr
    assert "top-1" in r.stdout and "index.parquet" in r.stdout
    assert pq.read_table(tmp_path / "index.parquet").num_rows > 0


@pytest.mark.parametrize("args,message", [
    (["demo", "--out", "x", "--fraction", "0"], "expected a number in (0, 1]"),
    (["demo", "--out", "x", "--w-bits", "1"], "bits must be 2..8"),
    (["demo", "--out", "x", "--method", "best"], "unknown method 'best'"),
])
def test_cli_user_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    args = [a if a != "x" else str(tmp_path / "o") for a in args]
    with pytest.raises(SystemExit) as exc:
        code = main(args)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_noise_and_audit(demo_run, tmp_path):
    out, _, _ = demo_run
    r = _cli("noise", "--data", "digits", "--rate", "0.2", "--seed", "1",
             "--out", str(tmp_path / "labels.parquet"))
    assert r.returncode == 0, r.stderr
    labels = pq.read_table(tmp_path / "labels.parquet")
    flipped = (labels.column("label").to_numpy() != labels.column("true_label").to_numpy())
    assert flipped.sum() == round(0.2 * 1437)
    rounds = sorted(str(p) for p in (out / "qat" / "scores").glob("epoch_*.parquet"))
    r = _cli("audit", "--scores", *rounds, "--index", str(out / "index.parquet"),
             "--true-labels", str(out / "qat" / "labels.parquet"), "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "flagged" in r.stdout and "AUROC" in r.stdout
    table = pq.read_table(tmp_path / "a" / "audit.parquet")
    assert table.num_rows == 400
    assert "Flagged share of each epoch" in (tmp_path / "a" / "report.html").read_text()
    # scores of a 400-sample subset audited against the whole digits split: a clear error
    r = _cli("audit", "--scores", *rounds, "--data", "digits", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "other ids" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()
