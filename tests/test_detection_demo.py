"""The detection demo: digit canvases in the COCO layout, a RetinaNet teacher, W4A4 QAT on
ACS subsets, the demo's tables on the contracts (a tiny configuration: what it wires
together, not what it reaches)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from coreset_curate.cli import main
from coreset_curate.tasks.detection import read_coco
from coreset_curate.tasks.detection.demo import (DetectionDemoConfig, format_detection_summary,
                                           run_detection_demo)
from coreset_curate.common.tables import table_metadata, validate_index

TINY = DetectionDemoConfig(train_images=20, test_images=6, backbone_epochs=1, fp_epochs=1,
                           epochs=2,
                           reselect_every=1, fraction=0.3, batch_size=8, fpn_channels=16)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("detdemo")
    return out, run_detection_demo(out, TINY)


def test_detection_demo_writes_a_coco_set_and_tables_on_the_contracts(demo_run):
    out, summary = demo_run
    train, test = read_coco(out / "data", "train"), read_coco(out / "data", "test")
    assert (len(train), len(test)) == (20, 6)
    sizes = [tuple(img.shape[1:]) for img in train.images]
    assert all(48 <= h <= 64 and 48 <= w <= 64 for h, w in sizes)
    sides = np.concatenate([b[:, 2] - b[:, 0] for b in train.boxes if len(b)])
    assert sides.min() >= 16 and sides.max() <= 28
    assert summary["train_boxes"] == sum(len(b) for b in train.boxes)
    # the backbone learns the training digits enlarged, 3 channels as the detector reads
    digits = pq.read_table(out / "data" / "digits24" / "train-00000.parquet")
    assert digits.num_rows == 1437 and digits.column_names == ["image", "label"]
    # one row per image per round: rounds before epochs 0 and 1 (R = 1)
    scores = pq.read_table(out / "scores.parquet")
    assert scores.num_rows == 2 * 20 == summary["score_rows"]
    assert sorted(set(scores.column("epoch").to_pylist())) == [0, 1]
    assert table_metadata(scores)["task"] == "detection"
    assert set(scores.column("sample_id").to_pylist()) == set(train.sample_ids.tolist())
    assert scores.column("ds").null_count == 0  # the teacher is the DS reference
    index = pq.read_table(out / "index.parquet")
    validate_index(index)
    assert index.num_rows == summary["index_rows"] == summary["images_trained_qat"]
    assert set(index.column("sample_id").to_pylist()) <= set(train.sample_ids.tolist())
    meta = table_metadata(index)
    assert (meta["method"], meta["R"], meta["fraction"]) == ("acs", 1, 0.3)
    per_epoch = np.bincount(index.column("epoch").to_numpy())
    assert len(per_epoch) == 2 and (per_epoch < 20).all()
    assert summary["subset_sizes"] == per_epoch.tolist()


def test_detection_demo_summary_is_the_runs_own(demo_run):
    out, summary = demo_run
    qat = json.loads((out / "qat" / "summary.json").read_text())
    fp = json.loads((out / "fp" / "summary.json").read_text())
    assert summary["qat"]["ap"] == qat["ap"] and summary["fp"]["ap50"] == fp["ap50"]
    assert summary["calibrated_ap"] == qat["calibrated_ap"]
    backbone = json.loads((out / "backbone" / "summary.json").read_text())
    assert summary["backbone_top1"] == backbone["top1"] and backbone["model"] == "resnet18"
    # the teacher started from that backbone
    config = yaml.safe_load((out / "fp" / "config.yaml").read_text())
    assert config["model_kwargs"]["backbone_weights"] == str(out / "backbone" / "model.pt")
    assert (qat["w_bits"], qat["a_bits"], qat["method"]) == (4, 4, "acs")
    assert (out / "student.pt").read_bytes() == (out / "qat" / "model.pt").read_bytes()
    assert json.loads((out / "summary.json").read_text()) == summary
    text = format_detection_summary(summary)
    assert "20 train / 6 test images" in text and "acs 30% subsets" in text


def test_detection_demo_keeps_earlier_outputs_unless_told(demo_run):
    out, _ = demo_run
    before = (out / "index.parquet").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        run_detection_demo(out, TINY)
    assert (out / "index.parquet").read_bytes() == before


def test_detection_demo_without_pycocotools_stops_before_training(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)  # as if not installed
    with pytest.raises(ImportError, match=r"coreset-curate\[detection\]"):
        run_detection_demo(tmp_path / "out", TINY)
    assert not (tmp_path / "out").exists()


def test_detection_demo_config_names_a_bad_value():
    with pytest.raises(ValueError, match="fraction"):
        DetectionDemoConfig(fraction=1.5)
    with pytest.raises(ValueError, match="train_images"):
        DetectionDemoConfig(train_images=0)


def test_cli_demo_task_detection_passes_its_options(monkeypatch, tmp_path, capsys):
    import coreset_curate.tasks.detection.demo as demo

    seen = {}

    def fake(out, config, overwrite=False):
        seen.update(out=out, config=config, overwrite=overwrite)
        return {"fake": True}

    monkeypatch.setattr(demo, "run_detection_demo", fake)
    monkeypatch.setattr(demo, "format_detection_summary", lambda s: "summary printed")
    assert main(["demo", "--task", "detection", "--out", str(tmp_path), "--epochs", "6",
                 "--fraction", "0.2"]) == 0
    cfg = seen["config"]
    # the detection defaults where the command line says nothing (fp epochs: 24, not 30)
    assert (cfg.epochs, cfg.fraction, cfg.fp_epochs) == (6, 0.2, 24)
    assert "summary printed" in capsys.readouterr().out
