import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import coreset_curate
from coreset_curate.cli import main
from coreset_curate.tasks.classification.demo import DemoConfig, run_demo
from coreset_curate.common.tables import (INDEX_SCHEMA, SCORE_SCHEMA, table_metadata, validate_index,
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
    from coreset_curate.labels.noise import read_labels

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


def test_cli_clean_then_select_around_the_flags(demo_run, tmp_path):
    """audit -> clean (exclude, relabel) -> select --exclude / --labels, as a user runs them
    on the demo's noisy QAT run (400 digits, 10% flipped)."""
    from coreset_curate.common.index import epoch_rows, read_index
    from coreset_curate.labels.cleaning import exclusions, read_labels_table

    out, _, _ = demo_run
    rounds = sorted(str(p) for p in (out / "qat" / "scores").glob("epoch_*.parquet"))
    labels = str(out / "qat" / "labels.parquet")
    a = tmp_path / "a"
    assert _cli("audit", "--scores", *rounds, "--true-labels", labels,
                "--out", str(a)).returncode == 0
    flagged = exclusions(a)
    assert len(flagged) > 10
    r = _cli("clean", "--audit", str(a), "--labels", labels, "--out", str(tmp_path / "c.parquet"))
    assert r.returncode == 0, r.stderr
    assert f"{len(flagged)} left out" in r.stdout and "wrong labels among them" in r.stdout
    cleaned = read_labels_table(tmp_path / "c.parquet")
    assert len(cleaned) == 400 - len(flagged) and not np.isin(flagged, cleaned.sample_ids).any()
    # fewer wrong labels than the 40 planted
    assert int((cleaned.labels != cleaned.true_labels).sum()) < 40 / 2

    def chosen(*extra):
        idx = tmp_path / f"i{len(list(tmp_path.glob('i*.parquet')))}.parquet"
        r = _cli("select", "--scores", rounds[-1], "--method", "el2n", "--fraction", "0.2",
                 "--epoch", "2", *extra, "--out", str(idx))
        assert r.returncode == 0, r.stderr
        return epoch_rows(read_index(idx), 2)[0]

    plain, excl = chosen(), chosen("--exclude", str(a))
    assert len(excl) == len(plain) and not np.isin(excl, flagged).any()
    # EVS alone picks the flagged first: several times their share of the data
    assert np.isin(plain, flagged).mean() > 3 * len(flagged) / 400
    kept = chosen("--labels", str(tmp_path / "c.parquet"))
    assert not np.isin(kept, flagged).any() and len(kept) < len(plain)  # 20% of fewer rows
    # a relabeled table changes labels the scores were made with: scores must be remade
    r = _cli("clean", "--audit", str(a), "--relabel", "--out", str(tmp_path / "r.parquet"))
    assert r.returncode == 0 and "relabeled" in r.stdout
    r = _cli("select", "--scores", rounds[-1], "--fraction", "0.2", "--epoch", "2", "--labels",
             str(tmp_path / "r.parquet"), "--out", str(tmp_path / "x.parquet"))
    assert r.returncode == 2 and "score the data with these labels first" in r.stderr
    # true labels whose label column is not what the scores saw
    r = _cli("audit", "--scores", *rounds, "--true-labels", str(tmp_path / "r.parquet"),
             "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "labels differ from those the scores were made with" in r.stderr
    r = _cli("clean", "--audit", str(tmp_path / "nope"), "--out", str(tmp_path / "y.parquet"))
    assert r.returncode == 2 and "no audit at" in r.stderr
