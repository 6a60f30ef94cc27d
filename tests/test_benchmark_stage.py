"""The resumable benchmarks' finished stages (a teacher, an audit) on a new machine: their
run folders are gone while their records stay, so the files come back from the kept copy
or are built again and must reproduce the record."""

import json
import shutil
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


def test_noise_robust_redo_of_a_teacher_takes_what_was_made_from_it(tmp_path, monkeypatch):
    import noise_robust

    monkeypatch.setattr(noise_robust, "RUNS_DIR", tmp_path / "runs")
    records = [{"name": n, "cleaning": c} for n, c in [
        ("sym20_fp", None), ("sym20_audit", None), ("sym20_fp_cleaned", None),
        ("sym20_acs_10_R4_none_s0", "none"), ("sym20_acs_10_R4_exclude_s0", "exclude"),
        ("sym20_rho_10_R1_exclude_retrain_s0", "exclude_retrain"),
        ("sym40_fp", None), ("sym40_acs_10_R4_none_s0", "none")]]
    every20 = [r["name"] for r in records if r["name"].startswith("sym20")]
    assert sorted(noise_robust.dependents(["sym20_fp"], records)) == sorted(every20)
    # the audit: the cleaned teacher and the rows that clean, not the uncleaned ones
    assert sorted(noise_robust.dependents(["sym20_audit"], records)) == [
        "sym20_acs_10_R4_exclude_s0", "sym20_audit", "sym20_fp_cleaned",
        "sym20_rho_10_R1_exclude_retrain_s0"]
    assert noise_robust.dependents(["sym20_fp_cleaned"], records) == [
        "sym20_fp_cleaned", "sym20_rho_10_R1_exclude_retrain_s0"]

    # supersede deletes each one's files as the benchmark lays them out, and nothing else
    runs = tmp_path / "runs"
    for p in ("sym20/fp/model.pt", "sym20/audit/audit.parquet", "sym20/rounds/e.parquet",
              "sym20/sym20_acs_10_R4_none_s0/last.pt", "sym40/fp/model.pt"):
        (runs / p).parent.mkdir(parents=True, exist_ok=True)
        (runs / p).write_bytes(b"x")
    (runs / "sym20" / "clean_relabel.parquet").write_bytes(b"x")
    results = Results(tmp_path / "noise_robust.json")
    for r in records:
        results.save(r)
    results.supersede(noise_robust.dependents(["sym20_fp"], records), "rebuilt teacher differs",
                      runs, paths=noise_robust.stage_paths)
    assert [r["name"] for r in results.load()] == ["sym40_fp", "sym40_acs_10_R4_none_s0"]
    assert sorted(p.name for p in (runs / "sym20").iterdir()) == []
    assert (runs / "sym40" / "fp" / "model.pt").exists()
    old = json.loads((tmp_path / "noise_robust_superseded.json").read_text())
    assert {r["name"] for r in old} == set(every20)
    assert all(r["superseded"]["reason"] == "rebuilt teacher differs" for r in old)


def test_pipeline_teacher_kept_for_the_plain_noisy_run_on_a_new_machine(tmp_path):
    """The plain noisy row is distilled from the pipeline folder's own teacher: kept once
    with its stage record, it comes back (sha256 checked) when the folder is gone."""
    import noise_pipeline

    folder, kept = tmp_path / "runs" / "sym40_s0", tmp_path / "kept" / "sym40_s0"
    (folder / "teacher").mkdir(parents=True)
    (folder / "teacher" / "model.pt").write_bytes(b"teacher weights")
    entry = {"key": "k1", "record": {"model_sha256": sha256_of(folder / "teacher" / "model.pt"),
                                     "wall_s": 992.5}}
    (folder / "curate.json").write_text(json.dumps({"teacher": entry}))

    assert noise_pipeline.noisy_teacher(folder, kept, "plain") == (
        folder / "teacher" / "model.pt", 992.5)
    assert (kept / "model.pt").read_bytes() == b"teacher weights"
    assert json.loads((kept / "teacher.json").read_text()) == entry

    # a new machine: the run folder is gone, the kept copy stands in
    shutil.rmtree(folder)
    assert noise_pipeline.noisy_teacher(folder, kept, "plain") == (kept / "model.pt", 992.5)
    (kept / "model.pt").write_bytes(b"other weights")
    with pytest.raises(SystemExit, match="differs from the sha256"):
        noise_pipeline.noisy_teacher(folder, kept, "plain")
    shutil.rmtree(kept)
    with pytest.raises(SystemExit, match="is not there"):
        noise_pipeline.noisy_teacher(folder, kept, "plain")


def test_kept_teacher_of_another_recipe_is_refused(tmp_path):
    import noise_pipeline

    folder, kept = tmp_path / "run", tmp_path / "kept"
    (folder / "teacher").mkdir(parents=True)
    (folder / "teacher" / "model.pt").write_bytes(b"w")
    (folder / "curate.json").write_text(json.dumps({"teacher": {"key": "new", "record": {}}}))
    kept.mkdir()
    (kept / "teacher.json").write_text(json.dumps({"key": "old", "record": {}}))
    with pytest.raises(SystemExit, match="another recipe's"):
        noise_pipeline.keep_teacher(folder, kept)
    assert not (kept / "model.pt").exists()
