"""The bad-input catalogue: every entry is something a user may feed the command line, and
each must end with exit status 2 and one line on stderr that names the problem (no
traceback), leaving files that already existed as they were.

The "Bad input" table of docs/guide/errors.md lists the same entries by name; a test keeps the two in step.
"""

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from coreset_curate.cli import main
from coreset_curate.tasks.classification.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([str(a) for a in args]))
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Good inputs the bad ones are made from: a digits score table, an index, checkpoints."""
    d = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    torch.save(model.state_dict(), d / "fp.pt")
    assert main(["-q", "score", "--data", "digits", "--model", "small_cnn", "--checkpoint",
                 str(d / "fp.pt"), "--reference", str(d / "fp.pt"), "--w-bits", "4",
                 "--a-bits", "4", "--out", str(d / "scores.parquet")]) == 0
    assert main(["-q", "select", "--scores", str(d / "scores.parquet"), "--method", "acs",
                 "--fraction", "0.1", "--epoch", "0", "--epochs", "4", "--reselect-every", "4",
                 "--out", str(d / "index.parquet")]) == 0
    scores = pq.read_table(d / "scores.parquet")
    from coreset_curate.data import load_data, to_hf_dataset

    to_hf_dataset(load_data("digits", "train")).to_parquet(
        str(d / "pq" / "train-00000-of-00001.parquet"))
    return {"dir": d, "parquet_dir": d / "pq", "scores": d / "scores.parquet", "index": d / "index.parquet",
            "fp": d / "fp.pt", "table": scores}


def _variant(fx, tmp, name, fn):
    """A copy of the good score table changed by ``fn`` (a pyarrow.Table -> Table)."""
    path = tmp / f"{name}.parquet"
    pq.write_table(fn(fx["table"]), path)
    return path


def _set(table, column, values):
    i = table.column_names.index(column)
    return table.set_column(i, column, pa.array(values))


def _select(path, *extra):
    return ["select", "--scores", path, "--method", "acs", "--fraction", "0.1", "--epoch", "0",
            "--epochs", "4", *extra]


def _score(fx, out, *extra, model="small_cnn", checkpoint=None):
    return ["score", "--data", "digits", "--model", model, "--checkpoint",
            checkpoint or fx["fp"], "--out", out, *extra]


def _empty(tmp: Path) -> Path:
    (tmp / "empty.pt").write_bytes(b"")
    return tmp / "empty.pt"


def _evil_checkpoint(path: Path) -> Path:
    class Payload:  # unpickling this would call print: weights_only must refuse it
        def __reduce__(self):
            return (print, ("the checkpoint ran code",))

    with open(path, "wb") as fh:
        pickle.dump({"conv.weight": Payload()}, fh)
    return path


def _other_arch(fx, tmp):
    torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(),
               tmp / "r20.pt")
    return tmp / "r20.pt"


def _w2_checkpoint(fx, tmp):
    from coreset_curate.quant import quantize_model

    m = create_model("small_cnn", num_classes=10, in_channels=1)
    quantize_model(m, 2, 2, calibration=[torch.rand(8, 1, 8, 8)])
    torch.save(m.state_dict(), tmp / "w2.pt")
    return tmp / "w2.pt"


def _recipe(tmp, text):
    (tmp / "r.yaml").write_text(text)
    return tmp / "r.yaml"


# (name in the docs' table, args builder (fx, tmp) -> argv, substring of the error line)
CATALOGUE = [
    ("score table missing", lambda fx, t: _select(t / "nope.parquet", "--out", t / "i.parquet"),
     "score table not found"),
    ("corrupt Parquet", lambda fx, t: _select(_write(t / "bad.parquet", b"not parquet" * 9),
                                              "--out", t / "i.parquet"),
     "not a readable Parquet file"),
    ("score column missing", lambda fx, t: _select(
        _variant(fx, t, "noevs", lambda tb: tb.drop_columns(["evs"])), "--out", t / "i.parquet"),
     "evs"),
    ("score column of the wrong type", lambda fx, t: _select(
        _variant(fx, t, "strevs", lambda tb: _set(tb, "evs", ["x"] * tb.num_rows)),
        "--out", t / "i.parquet"), "evs"),
    ("NaN score", lambda fx, t: _select(
        _variant(fx, t, "nan", lambda tb: _set(tb, "evs", np.r_[np.nan, np.ones(
            tb.num_rows - 1)].astype(np.float32))), "--out", t / "i.parquet"), "NaN"),
    ("infinite score", lambda fx, t: _select(
        _variant(fx, t, "inf", lambda tb: _set(tb, "ds", np.r_[np.inf, np.ones(
            tb.num_rows - 1)].astype(np.float32))), "--out", t / "i.parquet"), "infinite"),
    ("duplicate sample ids in a round", lambda fx, t: _select(
        _variant(fx, t, "dup", lambda tb: pa.concat_tables([tb, tb.slice(0, 3)])),
        "--out", t / "i.parquet"), "duplicate sample_id"),
    ("negative label", lambda fx, t: _select(
        _variant(fx, t, "neg", lambda tb: _set(tb, "label", np.r_[-1, np.zeros(
            tb.num_rows - 1, np.int64)])), "--out", t / "i.parquet"), "non-negative"),
    ("empty score table", lambda fx, t: _select(
        _variant(fx, t, "empty", lambda tb: tb.slice(0, 0)), "--out", t / "i.parquet"),
     "no rows"),
    ("fraction 0", lambda fx, t: ["select", "--scores", fx["scores"], "--fraction", "0",
                                  "--out", t / "i.parquet"], "expected a number in (0, 1]"),
    ("fraction above 1", lambda fx, t: ["select", "--scores", fx["scores"], "--fraction", "1.5",
                                        "--out", t / "i.parquet"],
     "expected a number in (0, 1]"),
    ("epoch past the run's end", lambda fx, t: ["select", "--scores", fx["scores"],
                                                "--fraction", "0.1", "--epoch", "9",
                                                "--epochs", "4", "--out", t / "i.parquet"],
     "epoch"),
    ("unknown method", lambda fx, t: _select(fx["scores"], "--method", "best",
                                             "--out", t / "i.parquet"), "unknown method"),
    ("unknown schedule", lambda fx, t: _select(fx["scores"], "--schedule", "sine",
                                               "--out", t / "i.parquet"), "unknown schedule"),
    ("unknown method option", lambda fx, t: _select(fx["scores"], "--option", "depth=3",
                                                    "--out", t / "i.parquet"), "depth"),
    ("index of another method", lambda fx, t: ["select", "--scores", fx["scores"], "--method",
                                               "el2n", "--fraction", "0.1", "--epoch", "4",
                                               "--out", _copy(fx["index"], t / "i.parquet")],
     "method"),
    ("epoch not in the index", lambda fx, t: ["export", "--data", "digits", "--index",
                                              fx["index"], "--epoch", "7", "--out", t / "e"],
     "epoch 7 is not in the index"),
    ("index of another dataset", lambda fx, t: ["export", "--data", "digits", "--split", "test",
                                                "--index", fx["index"], "--epoch", "0",
                                                "--out", t / "e"], "another dataset"),
    ("split name that leaves the dataset folder", lambda fx, t: [
        "export", "--data", fx["parquet_dir"], "--split", "../pq/train", "--index", fx["index"],
        "--epoch", "0", "--out", t / "e"], "split name"),
    ("export folder exists", lambda fx, t: ["export", "--data", "digits", "--index",
                                            fx["index"], "--epoch", "0", "--out",
                                            _export_dir(t)], "exists"),
    ("unknown model", lambda fx, t: _score(fx, t / "s.parquet", model="resnet9000"),
     "unknown model"),
    ("checkpoint of another architecture", lambda fx, t: _score(
        fx, t / "s.parquet", checkpoint=_other_arch(fx, t)), "does not fit this model"),
    ("checkpoint of another bit width", lambda fx, t: _score(
        fx, t / "s.parquet", "--w-bits", "4", "--a-bits", "4",
        checkpoint=_w2_checkpoint(fx, t)), "bits"),
    ("checkpoint that is not weights-only", lambda fx, t: _score(
        fx, t / "s.parquet", checkpoint=_evil_checkpoint(t / "evil.pt")),
     "not a weights-only checkpoint"),
    ("checkpoint that is an empty file", lambda fx, t: _score(
        fx, t / "s.parquet", checkpoint=_empty(t)), "not a weights-only checkpoint"),
    ("checkpoint missing", lambda fx, t: _score(fx, t / "s.parquet",
                                                checkpoint=t / "none.pt"), "none.pt"),
    ("score output exists", lambda fx, t: _score(fx, _copy(fx["scores"], t / "s.parquet")),
     "pass --overwrite"),
    ("dataset missing", lambda fx, t: ["score", "--data", t / "no-such-data", "--model",
                                       "small_cnn", "--checkpoint", fx["fp"],
                                       "--out", t / "s.parquet"], "no-such-data"),
    ("output folder is a file", lambda fx, t: _select(
        fx["scores"], "--out", _write(t / "file", b"x") / "i.parquet"), "file"),
    ("output folder without write permission", lambda fx, t: _select(
        fx["scores"], "--out", _no_write_folder(t) / "i.parquet"),
     "cannot write i.parquet in the folder"),
    ("unknown recipe key", lambda fx, t: ["train", "--recipe", _recipe(t, "epochs: 2\nepochz: 3\n"),
                                          "--out", t / "run"], "unknown recipe key"),
    ("recipe missing", lambda fx, t: ["train", "--recipe", t / "none.yaml", "--out", t / "run"],
     "none.yaml"),
    ("bad recipe value", lambda fx, t: ["train", "--set", "epochs=0", "--out", t / "run"],
     "epochs must be a positive integer"),
    ("teacher of another sha256", lambda fx, t: [
        "train", "--set", "mode=qat", "--set", f"teacher={fx['fp']}", "--set",
        "teacher_sha256=" + "ab" * 32, "--set", "model=small_cnn", "--out", t / "run"], "sha256"),
    ("run folder not empty", lambda fx, t: ["train", "--set", "epochs=1", "--out",
                                            _write(t / "run" / "x", b"x").parent],
     "not empty"),
    ("audit of another dataset", lambda fx, t: ["audit", "--scores", fx["scores"], "--data",
                                                "digits", "--split", "test", "--out", t / "a"],
     "other ids"),
    ("labels table of another split", lambda fx, t: _score(
        fx, t / "s.parquet", "--labels", _labels(t), "--split", "test"), "not in the dataset"),
    ("labels table that leaves samples out", lambda fx, t: _score(
        fx, t / "s.parquet", "--labels", _labels(t, keep=slice(10, None))),
     "leaves samples out on purpose"),
    ("labels table without a label column", lambda fx, t: _score(
        fx, t / "s.parquet", "--labels", _variant(fx, t, "nolabel", lambda tb: tb.select(
            ["sample_id", "evs"]))), "not a labels table"),
    ("exclusion list of other ids", lambda fx, t: _select(
        fx["scores"], "--exclude", _write_table(t / "x.parquet", {"sample_id": [99999]}),
        "--out", t / "i.parquet"), "lack"),
    ("audit folder missing", lambda fx, t: ["clean", "--audit", t / "no-audit", "--out",
                                            t / "l.parquet"], "no audit at"),
    ("noise rate above 1", lambda fx, t: ["noise", "--data", "digits", "--rate", "1.5",
                                          "--out", t / "l.parquet"], "rate"),
    ("asymmetric noise without a class map", lambda fx, t: [
        "noise", "--data", "digits", "--type", "asymmetric", "--rate", "0.2",
        "--out", t / "l.parquet"], "class map"),
    ("noise rate below 0", lambda fx, t: ["noise", "--data", "digits", "--rate", "-0.1",
                                          "--out", t / "l.parquet"],
     "rate must be a number in [0, 1]"),
    # cuda:99: no machine has it, so the case holds with and without a GPU
    ("device that is not there", lambda fx, t: _score(fx, t / "s.parquet", "--device",
                                                      "cuda:99"), "'cuda:99' is not available"),
    ("device torch does not know", lambda fx, t: _score(fx, t / "s.parquet", "--device", "gpu"),
     "not a device torch knows"),
    ("training on a device that is not there", lambda fx, t: [
        "train", "--set", "device=cuda:99", "--overwrite", "--out",
        _write(t / "run" / "x", b"x").parent], "'cuda:99' is not available"),
    ("crop size without streaming", lambda fx, t: _score(fx, t / "s.parquet", "--crop-size",
                                                         "8"), "apply to --stream"),
    ("negative min-per-class", lambda fx, t: _select(fx["scores"], "--min-per-class", "-1",
                                                     "--out", t / "i.parquet"),
     "min_per_class must be a non-negative integer"),
    ("negative seed", lambda fx, t: _select(fx["scores"], "--seed", "-1", "--out",
                                            t / "i.parquet"),
     "seed must be a non-negative integer"),
    ("method option of the wrong type", lambda fx, t: _select(
        fx["scores"], "--method", "ccs", "--option", "hard_cut=x", "--out", t / "i.parquet"),
     "option 'hard_cut' must be a finite number"),
    ("score table given as an index", lambda fx, t: [
        "export", "--data", "digits", "--index", fx["scores"], "--epoch", "0", "--out", t / "e"],
     "lacks column(s) ['weight']"),
    ("score table given as an audit", lambda fx, t: ["clean", "--audit", fx["scores"], "--out",
                                                     t / "l.parquet"], "not an audit table"),
    ("true labels without true_label", lambda fx, t: [
        "audit", "--scores", fx["scores"], "--true-labels", fx["scores"], "--out", t / "a"],
     "no true_label column"),
    ("channel suspicion without the softmax", lambda fx, t: [
        "audit", "--scores", fx["scores"], "--suspicion", "channel", "--out", t / "a"],
     "needs the student's whole softmax"),
    ("recipe that is not a mapping", lambda fx, t: [
        "train", "--recipe", _recipe(t, "- epochs\n- 2\n"), "--out", t / "run"],
     "must be a YAML mapping"),
    ("recipe that is not YAML", lambda fx, t: [
        "train", "--recipe", _recipe(t, "epochs: [1\nlr: 0.1\n"), "--out", t / "run"],
     "is not valid YAML"),
    ("recipe that inherits from itself", lambda fx, t: [
        "train", "--recipe", _recipe(t, "base: r.yaml\nepochs: 2\n"), "--out", t / "run"],
     "inherits from itself"),
    ("--set without a value", lambda fx, t: ["train", "--set", "epochs", "--out", t / "run"],
     "takes KEY=VALUE"),
    ("--set value that is not YAML", lambda fx, t: ["train", "--set", "epochs=[1", "--out",
                                                    t / "run"], "not valid YAML"),
    ("QAT without a checkpoint", lambda fx, t: ["train", "--set", "mode=qat", "--set", "kd=false",
                                                "--out", t / "run"],
     "QAT starts from a full-precision checkpoint"),
    ("labels table and label noise together", lambda fx, t: [
        "train", "--set", f"labels={t / 'l.parquet'}", "--set", "label_noise={rate: 0.2}",
        "--out", t / "run"], "both set the training labels"),
    ("exclusion list with method full", lambda fx, t: [
        "train", "--set", f"exclude={t / 'a'}", "--out", t / "run"], "with method full"),
    ("evaluation epoch past the run's end", lambda fx, t: [
        "train", "--set", "epochs=2", "--set", "eval_epochs=[3]", "--out", t / "run"],
     "eval_epochs must be a list of epochs between 1 and epochs"),
    ("score table not sorted, past the memory budget", lambda fx, t: _select(
        _variant(fx, t, "unsorted", lambda tb: tb.take(np.arange(tb.num_rows)[::-1])),
        "--memory-budget", "1", "--out", t / "i.parquet"), "not sorted by sample_id"),
    ("memory budget that is not a size", lambda fx, t: _select(
        fx["scores"], "--memory-budget", "lots", "--out", t / "i.parquet"),
     "memory budget must be a positive size"),
]


def _no_write_folder(t: Path) -> Path:
    """A folder this process may not write in: a read-only one for a normal user; root
    ignores permission bits, so for root a kernel folder that refuses everyone."""
    if os.geteuid() != 0:
        folder = t / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder = Path("/sys/fs")
    try:  # the premise: creating a file there must fail
        (folder / ".probe").open("x").close()
    except OSError:
        return folder
    (folder / ".probe").unlink()
    pytest.skip(f"{folder} can be written by this user; no unwritable folder to test with")


def _labels(t: Path, keep=slice(None)) -> Path:
    """A labels table of digits' training split (every label shifted by one class), or of
    some of its rows."""
    from coreset_curate.data import load_data

    data = load_data("digits", "train")
    return _write_table(t / "labels.parquet", {
        "sample_id": data.sample_ids[keep], "label": (data.labels.numpy()[keep] + 1) % 10})


def _write_table(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table({k: pa.array(np.asarray(v), pa.int64()) for k, v in
                             columns.items()}), path)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(Path(src).read_bytes())
    return dst


def _export_dir(tmp: Path) -> Path:
    (tmp / "e").mkdir()
    _write(tmp / "e" / "train-00000-of-00001.parquet", b"keep me")
    return tmp / "e"


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name,build,message", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(name, build, message, fx, tmp_path, capsys):
    args = build(fx, tmp_path)
    before = _snapshot(tmp_path)
    good_before = _snapshot(fx["dir"])
    code, out, err = _run(args, capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, f"{name}: exit {code}, stderr {err!r}"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message.lower() in lines[0].lower(), lines[0]
    assert "the checkpoint ran code" not in out + err
    # nothing that existed was changed, and no partial output was left behind
    after = _snapshot(tmp_path)
    assert {p: b for p, b in after.items() if p in before} == before
    assert not [p for p in after if p not in before and (p.name.endswith(".tmp")
                                                         or ".parquet." in p.name)]
    assert _snapshot(fx["dir"]) == good_before


def test_catalogue_size_and_docs_table():
    assert len(CATALOGUE) >= 60
    readme = (ROOT / "docs" / "guide" / "errors.md").read_text()
    section = readme.split("<!-- bad-input:start -->")[1].split("<!-- bad-input:end -->")[0]
    rows = re.findall(r"^\| ([^|]+?) \|", section, flags=re.M)[2:]  # skip header + rule
    assert rows == [c[0] for c in CATALOGUE]
