"""Detection training: RetinaNet's losses, distillation of head outputs, and the trainer
(select, train, AP, resume) on a detector recipe."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from coreset_curate.data import load_data
from coreset_curate.tasks.detection import create_detector, make_coco
from coreset_curate.tasks.detection.train import DetectorLoss, batch_of, soft_sigmoid_kd
from coreset_curate.common.tables import table_metadata
from coreset_curate.training import load_recipe, run_training

SMALL = {"fpn_channels": 16}


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    digits = load_data("digits", "train")
    root = tmp_path_factory.mktemp("detset")
    make_coco(digits, root, "train", count=12, seed=0)
    make_coco(load_data("digits", "test"), root, "test", count=4, seed=1)
    return root


@pytest.fixture(scope="module")
def det(det_root):
    return load_data(f"coco:{det_root}", "train")


def _model(seed=0):
    torch.manual_seed(seed)
    return create_detector("retinanet_resnet18_fpn", num_classes=10, **SMALL)


def _batch(det, positions):
    images, targets = batch_of(det, positions)
    # an image without boxes, as COCO has
    images.append(torch.rand(3, 100, 110))
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    return images, targets


def test_ground_truth_loss_is_retinanets_own(det):
    """Without a teacher the per-image loss averages to torchvision's RetinaNet losses
    (focal + L1 box, each over the foreground count), images without boxes included."""
    model = _model().train()
    images, targets = _batch(det, [0, 1, 2])
    ours = DetectorLoss(model)(images, targets)
    theirs = model(images, targets)
    assert torch.allclose(ours, sum(theirs.values()), rtol=1e-5, atol=1e-6)
    assert ours.item() > 0


def test_soft_sigmoid_kd_by_hand():
    # p = 0.5, t = 0.75: KL = .75 ln 1.5 + .25 ln .5 = 0.130812, weight (0.25)^2
    got = soft_sigmoid_kd(torch.zeros(1), torch.tensor([math.log(3.0)]))
    assert got.item() == pytest.approx(0.0625 * 0.130812, rel=1e-4)
    x = torch.randn(50, 10, requires_grad=True)
    same = soft_sigmoid_kd(x, x.detach())
    same.backward()
    assert abs(same.item()) < 1e-6 and x.grad.abs().max() < 1e-6  # optimum at the teacher


def test_distillation_vanishes_at_the_teacher_and_not_elsewhere(det):
    model = _model().eval()  # eval: batch-norm as the teacher's, so the outputs coincide
    images, targets = _batch(det, [0, 1])
    loss = DetectorLoss(model, label_weight=0.0)
    same = loss(images, targets, teacher=copy.deepcopy(model))
    same.backward()
    assert abs(same.item()) < 1e-5
    assert all(p.grad is None or p.grad.abs().max() < 1e-5 for p in model.parameters())
    other = _model(seed=1).eval()
    with torch.no_grad():  # untrained heads all say the prior (0.01): make this one differ
        other.head.classification_head.cls_logits.bias += 2.0
    assert loss(images, targets, teacher=other).item() > 1e-3
    # the ground-truth term comes in with label_weight
    with_gt = DetectorLoss(model, label_weight=1.0)(images, targets, teacher=other)
    assert with_gt.item() == pytest.approx(loss.last["kd"] + DetectorLoss(model)(
        images, targets).item(), rel=1e-4)


def test_image_weights_scale_each_images_loss(det):
    model = _model().eval()
    loss = DetectorLoss(model)
    images, targets = batch_of(det, [0, 1])
    alone = loss(images[:1], targets[:1]).item()
    weighted = loss(images, targets, torch.tensor([1.0, 0.0])).item()
    assert weighted == pytest.approx(alone / 2, rel=1e-5)


def test_flipped_batches_keep_their_boxes_on_the_objects(det):
    g = torch.Generator().manual_seed(0)
    images, targets = batch_of(det, list(range(len(det))), generator=g, flip=True)
    flipped = 0
    for i, (img, t) in enumerate(zip(images, targets)):
        if not torch.equal(img, det.images[i].float() / 255):
            flipped += 1
            assert torch.equal(img, det.images[i].flip(-1).float() / 255)
            w = img.shape[-1]
            assert np.allclose(t["boxes"][:, [2, 0]].numpy(), w - det.boxes[i][:, [0, 2]])
    assert 0 < flipped < len(det)


def _recipe(root, data=None, **extra):
    values = [f"data={data or f'coco:{root}'}", "model=retinanet_resnet18_fpn",
              f"model_kwargs={json.dumps(SMALL)}", "batch_size=4", "lr=0.01",
              "num_threads=1", "channels_last=false"]
    return load_recipe(None, values + [f"{k}={json.dumps(v)}" for k, v in extra.items()])


def test_detector_recipe_trains_selects_scores_and_resumes_exactly(det_root, tmp_path):
    fp = run_training(_recipe(det_root, mode="fp", epochs=1), tmp_path / "fp")
    assert {"ap", "ap50", "ap75", "best_ap"} <= set(fp) and "top1" not in fp
    # images decoded when read (COCO-sized sets): the same run to the byte
    lazy = run_training(_recipe(det_root, mode="fp", epochs=1, stream=True), tmp_path / "lazy")
    assert lazy["model_sha256"] == fp["model_sha256"]
    qat = dict(mode="qat", teacher=str(tmp_path / "fp" / "model.pt"), epochs=2,
               reselect_every=1, method="acs", fraction=0.5, label_weight=1.0)
    whole = run_training(_recipe(det_root, **qat), tmp_path / "whole")
    assert whole["w_bits"] == 4 and whole["calibrated_ap"] is not None
    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert all(0 <= x["ap50"] <= 1 and x["subset_size"] < 12 for x in lines)
    scores = pq.read_table(tmp_path / "whole" / "scores" / "epoch_0001.parquet")
    assert table_metadata(scores)["task"] == "detection" and scores.num_rows == 12
    index = pq.read_table(tmp_path / "whole" / "index.parquet").to_pydict()
    assert sorted(set(index["epoch"])) == [0, 1]
    # stopped after one epoch and resumed: the same subsets and the same weights
    assert run_training(_recipe(det_root, **qat), tmp_path / "parts", stop_after=1) is None
    again = run_training(_recipe(det_root, **qat), tmp_path / "parts", resume=True)
    assert again["model_sha256"] == whole["model_sha256"]
    assert pq.read_table(tmp_path / "parts" / "index.parquet").to_pydict() == index


def test_detector_recipes_refuse_what_they_do_not_take(det_root):
    with pytest.raises(ValueError, match="do not apply to a detector"):
        _recipe(det_root, label_noise={"rate": 0.2})
    with pytest.raises(ValueError, match="normalises its images itself"):
        _recipe(det_root, mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="is a classifier but data"):
        run_training(load_recipe(None, [f"data=coco:{det_root}", "epochs=1"]), det_root / "x")
    with pytest.raises(ValueError, match="is a detector but data"):
        run_training(_recipe(det_root, data="digits", epochs=1), det_root / "y")


def test_backbone_from_a_classifier_checkpoint_and_relative_to_the_recipe(tmp_path):
    from coreset_curate.tasks.classification.models import create_model

    torch.manual_seed(0)
    clf = create_model("resnet18", num_classes=10)
    torch.save(clf.state_dict(), tmp_path / "r18.pt")
    model = create_detector("retinanet_resnet18_fpn", num_classes=10, **SMALL,
                            backbone_weights=str(tmp_path / "r18.pt"))
    assert torch.equal(model.backbone.body.conv1.weight, clf.conv1.weight)
    assert torch.equal(model.backbone.body.layer4[1].bn2.running_var,
                       clf.layer4[1].bn2.running_var)
    torch.save(create_model("resnet20", num_classes=10).state_dict(), tmp_path / "r20.pt")
    with pytest.raises(ValueError, match="not a checkpoint of torchvision's resnet18"):
        create_detector("retinanet_resnet18_fpn", num_classes=10,
                        backbone_weights=str(tmp_path / "r20.pt"))
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "d.yaml").write_text(
        "model: retinanet_resnet18_fpn\nmodel_kwargs: {backbone_weights: ../r18.pt}\n")
    cfg = load_recipe(tmp_path / "recipes" / "d.yaml")
    assert cfg.model_kwargs == {"backbone_weights": str(tmp_path / "r18.pt")}


def test_every_shipped_recipe_loads():
    """The recipes in recipes/ are valid settings (keys, values, roles), detection ones
    with a registered detector on coco: data; curate recipes load as curate recipes and
    a training command refuses them with a pointer to `curate`."""
    from pathlib import Path

    from coreset_curate.pipeline import load_curate_recipe
    from coreset_curate.tasks import task_for_model

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert len(recipes) > 20
    curate = [p for p in recipes if p.name.endswith("_curate.yaml")]
    assert curate
    for path in curate:
        load_curate_recipe(path)
        with pytest.raises(ValueError, match="curate recipe"):
            load_recipe(path)
    for path in (p for p in recipes if p not in curate):
        cfg = load_recipe(path)
        detector = task_for_model(cfg.model).name == "detection"
        assert detector == path.name.startswith(("cifar10det_retinanet", "coco_")), path.name
        if detector:
            assert cfg.data.startswith("coco:")


def test_detection_subsets_load_and_export_through_hugging_face(det_root, det, tmp_path):
    import datasets

    from coreset_curate import AdaptiveSelector
    from coreset_curate.data.subsets import export_subset, load_subset

    sel = AdaptiveSelector(det, "random_epoch", 0.5, epochs=1, out=tmp_path / "run")
    sel.positions(0)
    ids = pq.read_table(tmp_path / "run" / "index.parquet").column("sample_id").to_pylist()
    for source in (f"coco:{det_root}", det):
        sub = load_subset(source, tmp_path / "run" / "index.parquet", 0)
        assert sub["image_id"] == sorted(ids)
        pos = det.positions(sub["image_id"])
        for row, p in zip(sub, pos):
            assert row["objects"]["category"] == det.classes[p].tolist()
            assert np.asarray(row["image"]).shape[:2] == det.image_size(p)
    from coreset_curate.cli import main

    assert main(["-q", "export", "--data", f"coco:{det_root}", "--index",
                 str(tmp_path / "run" / "index.parquet"), "--epoch", "0", "--out",
                 str(tmp_path / "export")]) == 0
    out = tmp_path / "export" / "train-00000-of-00001.parquet"
    with pytest.raises(FileExistsError):
        export_subset(f"coco:{det_root}", tmp_path / "run" / "index.parquet", 0,
                      tmp_path / "export")
    back = datasets.load_dataset("parquet", data_files=str(out), split="train")
    assert back["image_id"] == sorted(ids)
    first = det.positions([back[0]["image_id"]])[0]  # the image bytes travelled inside
    assert torch.equal(torch.from_numpy(np.array(back[0]["image"])).permute(2, 0, 1),
                       det.images[first])
    # the same image ids with other boxes: another dataset
    make_coco(load_data("digits", "train"), tmp_path / "other", "train", count=12, seed=5)
    with pytest.raises(ValueError, match="made from another dataset: its annotations_sha256"):
        load_subset(f"coco:{tmp_path / 'other'}", tmp_path / "run" / "index.parquet", 0)


def test_torchrun_two_gloo_ranks_distil_a_detector(det_root, tmp_path):
    """DistributedDataParallel around the per-image loss, the teacher beside it: both
    ranks run one QAT epoch and rank 0 writes the run."""
    import os
    import subprocess
    import sys

    from coreset_curate.common.index import epoch_rows, read_index

    torch.save(_model().state_dict(), tmp_path / "teacher.pt")
    env = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "ddp"
    sets = [f"data=coco:{det_root}", "model=retinanet_resnet18_fpn",
            f"model_kwargs={json.dumps(SMALL)}", "mode=qat", f"teacher={tmp_path / 'teacher.pt'}",
            "epochs=1", "batch_size=4", "channels_last=false", "method=random_epoch",
            "fraction=0.5", "label_weight=1.0"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "coreset_curate", "train",
                        *[a for s in sets for a in ("--set", s)], "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["w_bits"] == 4 and 0 <= summary["ap50"] <= 1
    ids, _ = epoch_rows(read_index(out / "index.parquet"), 0)
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["subset_size"] == len(ids) and 0 < len(ids) < 12
    assert np.isfinite(line["train_loss"]) and line["train_loss"] > 0


def test_cli_scores_a_detection_split_and_selects_from_it(det_root, det, tmp_path, capsys):
    from coreset_curate.cli import main

    torch.save(_model().state_dict(), tmp_path / "fp.pt")
    common = ["-q", "score", "--data", f"coco:{det_root}", "--model",
              "retinanet_resnet18_fpn", "--model-kwargs", "fpn_channels=16",
              "--checkpoint", str(tmp_path / "fp.pt")]
    assert main([*common, "--w-bits", "4", "--a-bits", "4", "--reference",
                 str(tmp_path / "fp.pt"), "--out", str(tmp_path / "s.parquet")]) == 0
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column("sample_id").to_pylist() == det.sample_ids.tolist()
    assert table.column("label").to_pylist() == det.image_labels.tolist()
    assert table_metadata(table)["task"] == "detection"
    assert all(d is not None and d >= 0 for d in table.column("ds").to_pylist())
    assert main(["-q", "select", "--scores", str(tmp_path / "s.parquet"), "--method", "acs",
                 "--fraction", "0.5", "--epochs", "4", "--out",
                 str(tmp_path / "index.parquet")]) == 0
    chosen = pq.read_table(tmp_path / "index.parquet").column("sample_id").to_pylist()
    assert 0 < len(chosen) < len(det) and set(chosen) <= set(det.sample_ids.tolist())
    assert main([*common, "--probs", "--out", str(tmp_path / "p.parquet")]) == 2
    assert "['--probs'] apply to classifiers" in capsys.readouterr().err
    assert main(["-q", "audit", "--scores", str(tmp_path / "s.parquet"), "--out",
                 str(tmp_path / "audit")]) == 2
    assert "auditing boxes is not built yet" in capsys.readouterr().err


def test_reference_outputs_are_kept_between_rounds_and_change_nothing(det):
    from coreset_curate.tasks.detection.scores import score_detections

    student, reference = _model(0).eval(), _model(1).eval()
    with torch.no_grad():
        reference.head.classification_head.cls_logits.bias += 2.0
    calls = []
    reference.backbone.register_forward_hook(lambda *_: calls.append(1))
    plain = score_detections(student, det, reference, batch_size=5)
    assert len(calls) == 3  # 12 images, batches of 5
    cache: dict = {}
    first = score_detections(student, det, reference, batch_size=5, reference_cache=cache)
    second = score_detections(student, det, reference, batch_size=5, reference_cache=cache)
    assert len(calls) == 6 and len(cache) == 3  # the second round ran no reference pass
    for table in (first, second):
        assert table.column("ds").to_pylist() == plain.column("ds").to_pylist()
        assert table.column("ref_pred").to_pylist() == plain.column("ref_pred").to_pylist()
    assert max(plain.column("ds").to_pylist()) > 0
