"""The resumable benchmarks' finished stages (a teacher, an audit) on a new machine: their
run folders are gone while their records stay, so the files come back from the kept copy
or are built again and must reproduce the record."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import resumable  # noqa: E402
from resumable import Results, sha256_of, stage  # noqa: E402


class Builder:
    """Writes model.pt (its content fixed by ``blob``) and returns a record."""

    def __init__(self, out: Path, blob: bytes = b"weights", top1: float = 81.25,
                 wall_s: float = 13.0) -> None:
        self.out, self.blob, self.top1, self.wall_s, self.calls = out, blob, top1, wall_s, 0

    def __call__(self) -> dict:
        self.calls += 1
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "model.pt").write_bytes(self.blob)
        return {"name": "fp", "kind": "teacher", "top1": self.top1, "wall_s": self.wall_s}


@pytest.fixture
def kept(tmp_path, monkeypatch):
    monkeypatch.setattr(resumable, "KEPT", tmp_path / "kept")
    return tmp_path / "kept"


def test_first_build_saves_record_and_kept_copy_with_sha256(tmp_path, kept):
    results, out = Results(tmp_path / "r.json"), tmp_path / "runs" / "fp"
    build = Builder(out)
    assert stage(results, "fp", out, build, ("model.pt",), keep="bench/fp") == out
    record = json.loads((tmp_path / "r.json").read_text())[0]
    assert record["sha256"] == {"model.pt": sha256_of(out / "model.pt")}
    assert (kept / "bench" / "fp" / "model.pt").read_bytes() == b"weights"
    # finished and its files present: not built again
    stage(results, "fp", out, build, ("model.pt",), keep="bench/fp")
    assert build.calls == 1


def test_new_machine_restores_kept_files_without_building(tmp_path, kept):
    results, out = Results(tmp_path / "r.json"), tmp_path / "runs" / "fp"
    stage(results, "fp", out, Builder(out), ("model.pt",), keep="bench/fp")
    (out / "model.pt").unlink()  # the run folder of another machine
    again = Builder(out)
    stage(results, "fp", out, again, ("model.pt",), keep="bench/fp")
    assert again.calls == 0 and (out / "model.pt").read_bytes() == b"weights"


def test_kept_copy_that_differs_from_the_record_is_refused(tmp_path, kept):
    results, out = Results(tmp_path / "r.json"), tmp_path / "runs" / "fp"
    stage(results, "fp", out, Builder(out), ("model.pt",), keep="bench/fp")
    (out / "model.pt").unlink()
    (kept / "bench" / "fp" / "model.pt").write_bytes(b"other weights")
    with pytest.raises(SystemExit, match="differ from the sha256"):
        stage(results, "fp", out, Builder(out), ("model.pt",), keep="bench/fp")
    assert not (out / "model.pt").exists()


def test_rebuilt_stage_that_reproduces_its_record_goes_on(tmp_path, kept):
    results, out = Results(tmp_path / "r.json"), tmp_path / "runs" / "fp"
    stage(results, "fp", out, Builder(out), ("model.pt",))  # not kept (too large)
    (out / "model.pt").unlink()
    again = Builder(out, wall_s=14.0)
    assert stage(results, "fp", out, again, ("model.pt",)) == out
    assert again.calls == 1
    # the first record stands (its wall time is the first build's)
    assert results.load()[0]["wall_s"] == 13.0


def test_rebuilt_stage_that_differs_stops_with_the_redo_to_run(tmp_path, kept):
    results, out = Results(tmp_path / "r.json"), tmp_path / "runs" / "fp"
    stage(results, "fp", out, Builder(out), ("model.pt",))
    (out / "model.pt").unlink()
    with pytest.raises(SystemExit, match=r"in top1.*--redo fp"):
        stage(results, "fp", out, Builder(out, blob=b"other", top1=81.26), ("model.pt",))
    assert results.load()[0]["top1"] == 81.25
    # the new files are set aside: the next pass builds again instead of taking them
    assert not (out / "model.pt").exists()
    assert (out / "model.pt.not-reproduced").read_bytes() == b"other"
    again = Builder(out)
    stage(results, "fp", out, again, ("model.pt",))
    assert again.calls == 1


def test_floats_compare_to_a_relative_tolerance_counts_exactly():
    from resumable import same_value

    # an AUROC summed in another order (seen: 0.956676705 and 0.9566767016666667)
    assert same_value({"auroc": 0.956676705, "flagged": 23494},
                      {"auroc": 0.9566767016666667, "flagged": 23494})
    assert not same_value({"auroc": 0.95667, "flagged": 23494},
                          {"auroc": 0.95667, "flagged": 23495})
    # a top-1 one test image apart out of 10,000
    assert not same_value(81.11000061035156, 81.12000274658203)
    assert not same_value({"a": 1.0}, {"a": 1.0, "b": 2.0})
    assert same_value([1, 2.0], [1, 2.0000000001]) and not same_value(True, 1)


def test_build_that_writes_no_file_is_an_error(tmp_path, kept):
    results, out = Results(tmp_path / "r.json"), tmp_path / "runs" / "fp"
    with pytest.raises(RuntimeError, match="labels.parquet"):
        stage(results, "fp", out, Builder(out), ("model.pt", "labels.parquet"))
    assert results.load() == []
