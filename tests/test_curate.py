"""coreset-curate curate: the noisy-labels pipeline end to end on digits, its stage
bookkeeping (skipped when unchanged, refused when made from other inputs) and its errors."""

import json

import pytest

from coreset_curate.cli import main
from coreset_curate.pipeline import curate, load_curate_recipe

COMMON = ("data: digits\nmodel: small_cnn\nbatch_size: 64\nchannels_last: false\n"
          "eval_batch_size: 512\nscore_batch_size: 512\n")


def _recipes(tmp_path, fraction=0.5):
    (tmp_path / "fp.yaml").write_text(COMMON + "mode: fp\nepochs: 4\nlr: 0.05\n"
                                      "weight_decay: 1.0e-4\n")
    (tmp_path / "qat.yaml").write_text(COMMON + "mode: qat\nw_bits: 4\na_bits: 4\nepochs: 3\n"
                                       "optimizer: adam\nlr: 1.0e-3\nmethod: small_loss\n"
                                       f"fraction: {fraction}\nreselect_every: 1\n")
    (tmp_path / "curate.yaml").write_text(
        "teacher: fp.yaml\nstudent: qat.yaml\n"
        "common: {label_noise: {type: symmetric, rate: 0.3, seed: 0}}\n")
    return tmp_path / "curate.yaml"


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curate")
    out = folder / "out"
    summary = curate(load_curate_recipe(_recipes(folder)), out)
    return folder, out, summary


def test_the_pipeline_cleans_the_labels_and_trains_a_quantized_student(done):
    _, out, summary = done
    for stage in ("teacher", "audit", "clean", "teacher_clean", "student", "final_audit"):
        assert summary["stages"][stage] is not None, stage
    assert summary["wrong_labels_before"] == pytest.approx(0.3, abs=0.01)
    # the audit estimates the noise without being told it, and cleaning removes some of it
    assert 0.05 < summary["estimated_noise_rate"] < 0.6
    assert summary["wrong_labels_after"] < summary["wrong_labels_before"]
    assert summary["stages"]["clean"]["left_out"] > 0
    # the student trained on what was kept: its subsets hold fewer wrong labels than given
    assert summary["student_noisy_share"] < summary["wrong_labels_before"]
    assert 0 <= summary["student_top1"] <= 100
    assert json.loads((out / "summary.json").read_text())["student_top1"] == summary["student_top1"]
    page = (out / "report.html").read_text()
    assert "quantized student top-1" in page and 'href="audit/report.html"' in page
    assert (out / "final_audit" / "audit.parquet").exists()


def test_a_second_call_skips_every_stage(done, capsys):
    folder, out, summary = done
    before = {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}
    again = curate(load_curate_recipe(folder / "curate.yaml"), out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")} == before  # nothing trained
    assert again["stages"] == summary["stages"]


def test_a_stage_made_from_other_inputs_is_refused_then_remade_with_overwrite(done, tmp_path):
    folder, out, _ = done
    changed = load_curate_recipe(folder / "curate.yaml", ["student_set={fraction: 0.3}"])
    with pytest.raises(ValueError, match="was made from another recipe"):
        curate(changed, out)
    teachers = {p: p.stat().st_mtime_ns for p in (out / "teacher").rglob("model.pt")}
    summary = curate(changed, out, overwrite=True)
    assert summary["stages"]["student"]["fraction"] == 0.3
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher").rglob("model.pt")} == teachers


def test_curate_recipe_errors(tmp_path, capsys):
    recipe = _recipes(tmp_path)
    with pytest.raises(ValueError, match="unknown curate key"):
        load_curate_recipe(recipe, ["studnet=qat.yaml"])
    with pytest.raises(ValueError, match="clean must be one of"):
        load_curate_recipe(recipe, ["clean=drop"])
    with pytest.raises(ValueError, match="training labels go in common"):
        load_curate_recipe(recipe, ["student_set={label_noise: {rate: 0.1}}"])
    (tmp_path / "other.yaml").write_text(COMMON.replace("small_cnn", "resnet20")
                                         + "mode: qat\nepochs: 1\n")
    with pytest.raises(ValueError, match="both recipes must name one model"):
        curate(load_curate_recipe(recipe, ["student=other.yaml"]), tmp_path / "o")
    assert main(["curate", "--recipe", str(tmp_path / "none.yaml"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "curate recipe not found" in capsys.readouterr().err
