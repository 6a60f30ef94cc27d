"""Detection data: the COCO-layout reader, the set made from a classification split, and
box-aware transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from coreset_curate.cli import main
from coreset_curate.data import load_data
from coreset_curate.tasks.detection import (BadAnnotation, LazyImages, hflip, make_coco, read_coco,
                                      resize)
from coreset_curate.tasks.detection.synth import _resized


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "train")


@pytest.fixture(scope="module")
def made(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    make_coco(digits, root, "train", count=40, seed=3)
    return root


def test_made_set_reads_back_with_exact_boxes(made, digits):
    det = load_data(f"coco:{made}", "train")
    doc = json.loads((made / "annotations" / "instances_train.json").read_text())
    assert len(det) == 40 and list(det.sample_ids) == list(range(1, 41))
    assert det.class_names == digits.class_names and det.category_ids == list(range(1, 11))
    assert 40 <= sum(len(b) for b in det.boxes) <= 160
    by_image: dict[int, list] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for i, img in enumerate(det.images):
        h, w = img.shape[1:]
        assert 96 <= h <= 128 and 96 <= w <= 128
        anns = by_image.get(int(det.sample_ids[i]), [])
        assert len(anns) == len(det.boxes[i])
        for a, box, cls in zip(anns, det.boxes[i], det.classes[i]):
            x, y, s, _ = a["bbox"]
            assert np.array_equal(box, [x, y, x + s, y + s]) and 24 <= s <= 56
            assert cls == a["category_id"] - 1 == a["true_category_id"] - 1
        # the object pasted last lies on top: its box holds exactly its resized source
        if anns:
            a = anns[-1]
            x, y, s, _ = a["bbox"]
            src = digits.images[digits.positions([a["source_id"]])[0]].expand(3, -1, -1)
            assert np.array_equal(img[:, y:y + s, x:x + s].numpy(), _resized(src, s))
            assert det.classes[i][-1] == int(digits.labels[digits.positions(
                [a["source_id"]])[0]])


def test_made_set_is_deterministic_by_seed(made, digits, tmp_path):
    make_coco(digits, tmp_path / "a", "train", count=40, seed=3)
    make_coco(digits, tmp_path / "b", "train", count=40, seed=4)
    for name in ("annotations/instances_train.json", "train/000007.png"):
        assert (tmp_path / "a" / name).read_bytes() == (made / name).read_bytes()
    assert (tmp_path / "b" / "annotations" / "instances_train.json").read_bytes() != (
        made / "annotations" / "instances_train.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        make_coco(digits, tmp_path / "a", "train", count=5)


def test_class_noise_relabels_its_share_and_keeps_the_truth(digits, tmp_path):
    make_coco(digits, tmp_path, "train", count=300, seed=0, class_noise=0.3)
    anns = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())[
        "annotations"]
    wrong = np.mean([a["category_id"] != a["true_category_id"] for a in anns])
    assert len(anns) > 500 and abs(wrong - 0.3) < 0.05


def _coco(root, images, annotations, categories):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(exist_ok=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_grayscale_sparse_categories_crowd_and_empty_images(tmp_path):
    Image.fromarray(np.full((20, 30), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    (tmp_path / "train").mkdir()
    (tmp_path / "g.png").rename(tmp_path / "train" / "g.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "train" / "e.png")
    _coco(tmp_path, [{"id": 90, "file_name": "g.png", "width": 30, "height": 20},
                     {"id": 5, "file_name": "e.png", "width": 10, "height": 10}],
          [{"id": 1, "image_id": 90, "category_id": 17, "bbox": [1, 2, 10, 5]},
           {"id": 2, "image_id": 90, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 1},
           {"id": 3, "image_id": 90, "category_id": 17, "bbox": [20, 10, 10, 10]}],
          [{"id": 17, "name": "cat"}, {"id": 3, "name": "dog"}])
    det = read_coco(tmp_path, "train")
    assert list(det.sample_ids) == [5, 90] and det.class_names == ["dog", "cat"]
    assert det.category_ids == [3, 17]
    gray = det.images[1]
    assert gray.shape == (3, 20, 30) and (gray == 77).all()
    assert det.boxes[0].shape == (0, 4) and det.image_labels.tolist() == [-1, 1]
    assert np.array_equal(det.boxes[1], [[1, 2, 11, 7], [20, 10, 30, 20]])
    assert np.array_equal(det.crowd[1], [[0, 0, 30, 20]])


@pytest.mark.parametrize("ann,message", [
    ({"id": 7, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 4]}, "outside the 16x12"),
    ({"id": 7, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]}, "category 9"),
    ({"id": 7, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]}, "refers to image 2"),
    ({"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 2]}, "no area"),
    ({"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2]}, "[x, y, width, height]"),
])
def test_bad_annotations_name_the_image(tmp_path, ann, message):
    _coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}], [ann],
          [{"id": 1, "name": "x"}])
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    with pytest.raises(BadAnnotation, match="image") as err:
        read_coco(tmp_path, "train")
    assert message in str(err.value)


def test_missing_or_mis_sized_image_files_are_named(tmp_path):
    _coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}], [],
          [{"id": 1, "name": "x"}])
    with pytest.raises(FileNotFoundError, match="a.png"):
        read_coco(tmp_path, "train")
    Image.fromarray(np.zeros((12, 15, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    with pytest.raises(BadAnnotation, match="15x12 but the annotations say 16x12"):
        read_coco(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        read_coco(tmp_path, "val")


def test_streamed_coco_decodes_when_read_and_matches_the_decoded_split(made, tmp_path):
    det = read_coco(made, "train")
    lazy = load_data(f"coco:{made}", "train", stream=True)
    assert isinstance(lazy.images, LazyImages) and len(lazy) == len(det)
    assert lazy.fingerprint == det.fingerprint
    assert all(lazy.image_size(i) == det.image_size(i) for i in range(len(det)))
    for i in (0, 17, 39):
        assert torch.equal(lazy.images[i], det.images[i])
    part = lazy.subset([5, 2])
    assert isinstance(part.images, LazyImages) and torch.equal(part.images[1], det.images[2])
    # a file that changed size after indexing is named when it is read
    _coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}], [],
          [{"id": 1, "name": "x"}])
    Image.fromarray(np.zeros((12, 15, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    odd = read_coco(tmp_path, "train", stream=True)
    with pytest.raises(BadAnnotation, match="15x12 but the annotations say 16x12"):
        odd.images[0]
    with pytest.raises(ValueError, match="a detector resizes its images itself"):
        load_data(f"coco:{made}", "train", stream=True, crop_size=64)


def _hf_detection(made):
    import datasets

    det = read_coco(made, "train")
    rows = {"image_id": [], "image": [], "objects": []}
    for i in range(6):
        b = det.boxes[i]
        rows["image_id"].append(int(det.sample_ids[i]) + 100)
        rows["image"].append(Image.fromarray(det.images[i].permute(1, 2, 0).numpy()))
        rows["objects"].append({"bbox": np.c_[b[:, :2], b[:, 2:] - b[:, :2]].tolist(),
                                "category": det.classes[i].tolist()})
    feats = datasets.Features({
        "image_id": datasets.Value("int64"), "image": datasets.Image(),
        "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"),
                                                                length=4),
                                      "category": datasets.ClassLabel(names=det.class_names)})})
    return det, datasets.Dataset.from_dict(rows, features=feats)


def test_hugging_face_detection_datasets_read_like_coco(made):
    det, ds = _hf_detection(made)
    for stream in (False, True):
        hf = load_data(ds, "train", stream=stream)
        assert hf.task == "detection" and hf.class_names == det.class_names
        assert hf.sample_ids.tolist() == (det.sample_ids[:6] + 100).tolist()
        assert hf.category_ids == list(range(1, 11))
        for i in range(6):
            assert np.array_equal(hf.boxes[i], det.boxes[i])
            assert np.array_equal(hf.classes[i], det.classes[i])
            assert torch.equal(hf.images[i], det.images[i])
    bad = ds.map(lambda r: {"objects": {"bbox": [[0.0, 0.0, 500.0, 5.0]], "category": [1]}},
                 features=ds.features)
    with pytest.raises(BadAnnotation, match="row 0 .*outside"):
        load_data(bad, "train")


def test_streamed_hugging_face_sizes_come_from_width_and_height_columns(made):
    """Streamed, a dataset's width/height columns give the sizes (no file is opened for
    them); an image that disagrees with its columns is named when it is decoded."""
    det, ds = _hf_detection(made)
    hs = [int(det.images[i].shape[1]) for i in range(6)]
    ws = [int(det.images[i].shape[2]) for i in range(6)]
    good = ds.add_column("width", ws).add_column("height", hs)
    hf = load_data(good, "train", stream=True)
    assert hf.images.sizes == list(zip(hs, ws))
    assert torch.equal(hf.images[0], det.images[0])
    wrong = ds.add_column("width", [w + 200 for w in ws]).add_column("height", hs)
    hf = load_data(wrong, "train", stream=True)  # boxes fit the wider size: read
    assert hf.images.sizes[0] == (hs[0], ws[0] + 200)
    with pytest.raises(BadAnnotation, match="row 0 .*the file is"):
        hf.images[0]
    with pytest.raises(BadAnnotation, match="width and height must be positive"):
        load_data(ds.add_column("width", [0] * 6).add_column("height", hs), "train",
                  stream=True)


def test_boxes_follow_flips_and_resizes():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    box = np.array([[10, 5, 25, 30]], np.float32)
    img[:, 5:30, 10:25] = 255
    flipped, fbox = hflip(img, box)
    ys, xs = np.nonzero(flipped[0].numpy())
    assert np.array_equal(fbox, [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
    big, bbox = resize(img, box, (80, 120))
    assert np.array_equal(bbox, box * 2)
    ys, xs = np.nonzero(big[0].numpy() > 127)
    assert np.array_equal([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], bbox[0])


def test_cli_make_detection(tmp_path, capsys):
    assert main(["make-detection", "--data", "digits", "--split", "test", "--count", "6",
                 "--out", str(tmp_path), "--out-split", "val"]) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and (tmp_path / "annotations" / "instances_val.json").exists()
    assert len(read_coco(tmp_path, "val")) == 6


# ------------------------------------------------------------------ models
def test_retinanet_quantizes_every_conv_with_first_and_outputs_at_8_bits(tmp_path):
    from coreset_curate.tasks.detection import create_detector
    from coreset_curate.quant import calibrate_, quantize_model
    from coreset_curate.quant.lsq import _QuantMixin

    torch.manual_seed(0)
    model = create_detector("retinanet_resnet18_fpn", num_classes=10)
    convs = [n for n, m in model.named_modules() if type(m) is torch.nn.Conv2d]
    quantize_model(model, 4, 4)
    bits = {n: m.w_quant.bits for n, m in model.named_modules() if isinstance(m, _QuantMixin)}
    assert sorted(bits) == sorted(convs)  # backbone, FPN and both heads
    eight = {"backbone.body.conv1", "head.classification_head.cls_logits",
             "head.regression_head.bbox_reg"}
    assert {n for n, b in bits.items() if b == 8} == eight
    assert all(b == 4 for n, b in bits.items() if n not in eight)
    x = torch.rand(2, 3, 100, 120)
    calibrate_(model, [x], max_batches=1)
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(list(x), targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    step = model.head.classification_head.conv[0][0].w_quant.step
    assert step.grad is not None and torch.isfinite(step.grad).all()
    torch.save(model.state_dict(), tmp_path / "q.pt")
    again = quantize_model(create_detector("retinanet_resnet18_fpn", num_classes=10), 4, 4)
    again.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    model.eval(), again.eval()
    with torch.no_grad():
        a, b = model(list(x)), again(list(x))
    assert all(torch.equal(p["scores"], q["scores"]) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="unexpected keyword argument 'fpn_channel'"):
        create_detector("retinanet_resnet18_fpn", num_classes=10, fpn_channel=64)
    with pytest.raises(ValueError, match="backbone_weights for resnet18 must be one of"):
        create_detector("retinanet_resnet18_fpn", num_classes=10, backbone_weights="NOPE")
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("yolo", num_classes=10)


def test_group_norm_head_outputs_depend_on_the_image_at_a_narrow_width():
    """At 64 channels the published head's outputs at initialisation hardly vary (each of
    its four convolutions shrinks the signal about fourfold); the default group-norm head's
    vary a hundred times more, and a small P7 map (1x1) still normalises."""
    from coreset_curate.tasks.detection import create_detector

    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i))
              for i in range(2)]
    spread = {}
    for norm in ("group", None):
        torch.manual_seed(0)
        model = create_detector("retinanet_resnet18_fpn", num_classes=10, fpn_channels=64,
                                min_size=96, max_size=96, head_norm=norm).eval()
        assert any(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules()) == (
            norm == "group")
        with torch.no_grad():
            batch, _ = model.transform(images)
            features = list(model.backbone(batch.tensors).values())
            out = model.head(features)
        assert features[-1].shape[-2:] == (1, 1)
        spread[norm] = float(out["cls_logits"].std())
    assert spread["group"] > 100 * spread[None]
    with pytest.raises(ValueError, match="head_norm must be 'group' or null"):
        create_detector("retinanet_resnet18_fpn", num_classes=10, head_norm="batch")


# ------------------------------------------------------------------ per-image scores
def test_detection_scores_follow_their_definitions(made):
    """evs, prob_label and loss on hand-made head outputs: a head that puts the matched
    box's class on every foreground anchor scores evs 0, the wrong class sqrt(2)."""
    from coreset_curate.tasks.detection import create_detector
    from coreset_curate.tasks.detection.scores import head_outputs, image_scores

    torch.manual_seed(0)
    model = create_detector("retinanet_resnet18_fpn", num_classes=10).eval()
    det = read_coco(made, "train")
    images = [det.images[0].float() / 255]
    targets = [{"boxes": torch.as_tensor(det.boxes[0]), "labels": torch.as_tensor(det.classes[0])}]
    cls, deltas, anchors, resized = head_outputs(model, images, targets)
    from torchvision.ops import boxes as box_ops

    matched = model.proposal_matcher(box_ops.box_iou(resized[0]["boxes"], anchors[0]))
    fg = matched >= 0
    right = torch.full_like(cls, -20.0)
    right[0, fg, resized[0]["labels"][matched[fg]]] = 20.0
    wrong = torch.full_like(cls, -20.0)
    wrong[0, fg, (resized[0]["labels"][matched[fg]] + 1) % 10] = 20.0
    good = image_scores(model, right, deltas, anchors, resized, ref_cls=right)
    bad = image_scores(model, wrong, deltas, anchors, resized, ref_cls=right)
    assert good["fg_anchors"][0] == int(fg.sum()) > 0
    assert good["evs"][0] < 1e-6 and good["prob_label"][0] > 0.999 and good["ds"][0] < 1e-6
    assert bad["evs"][0] == pytest.approx(2 ** 0.5, abs=1e-5) and bad["prob_label"][0] < 1e-6
    assert bad["ds"][0] > 0.5 and bad["loss"][0] > good["loss"][0]
    assert good["pred"][0] in set(det.classes[0].tolist())


def test_score_detections_writes_one_row_an_image(made):
    from coreset_curate.tasks.detection import create_detector
    from coreset_curate.tasks.detection.scores import score_detections

    torch.manual_seed(0)
    det = read_coco(made, "train").subset(np.arange(6))
    student, ref = (create_detector("retinanet_resnet18_fpn", num_classes=10) for _ in range(2))
    t = score_detections(student, det, ref, epoch=2, batch_size=4)
    assert t.num_rows == 6 and t.column("sample_id").to_pylist() == det.sample_ids.tolist()
    assert t.column("label").to_pylist() == det.image_labels.tolist()
    assert t.column("num_boxes").to_pylist() == [len(b) for b in det.boxes]
    evs = t.column("evs").to_numpy()
    assert np.isfinite(evs).all() and (evs >= 0).all() and (evs <= 10 ** 0.5).all()
    assert t.column("ds").null_count == 0
    assert score_detections(student, det, epoch=0).column("ds").null_count == 6


def test_selection_runs_on_detection_tables_with_a_group_for_images_without_boxes():
    import pyarrow as pa

    from coreset_curate.selection import select
    from coreset_curate.common.tables import with_metadata

    rng = np.random.default_rng(0)
    labels = np.r_[np.full(10, -1), np.arange(30) % 3]  # 10 images without boxes
    n = len(labels)
    cols = {"sample_id": np.arange(n), "label": labels, "epoch": np.zeros(n, np.int32),
            **{c: rng.random(n).astype(np.float32) for c in ("evs", "ds", "loss")}}
    table = with_metadata(pa.table(cols), {"task": "detection"})
    for method in ("acs", "random_epoch", "el2n"):
        ids = select([table], method, 0.2, epochs=4).sample_ids
        assert np.bincount(labels[ids] + 1).tolist() == [2, 2, 2, 2]  # 20% of each group
    evs = cols["evs"]
    top_empty = np.argsort(-evs[:10])[:2]
    assert set(top_empty) <= set(select([table], "el2n", 0.2).sample_ids)
    with pytest.raises(Exception, match="non-negative"):  # not a detection table: refused
        select([pa.table(cols)], "el2n", 0.2)


def test_adaptive_selector_scores_and_selects_detection_images(made, tmp_path):
    import coreset_curate as cc
    from coreset_curate.tasks.detection import create_detector
    from coreset_curate.common.tables import read_table, table_metadata

    torch.manual_seed(0)
    det = read_coco(made, "train")
    student, ref = (create_detector("retinanet_resnet18_fpn", num_classes=10) for _ in range(2))
    sel = cc.AdaptiveSelector(det, "acs", 0.25, epochs=2, reselect_every=2, reference=ref,
                              out=tmp_path / "run", batch_size=8)
    ids, weights = sel.subset(0, student)
    groups = det.image_labels
    budget = {c: int(np.floor(0.25 * (groups == c).sum() + 0.5)) for c in np.unique(groups)}
    chosen = groups[det.positions(ids)]
    assert {c: int((chosen == c).sum()) for c in budget} == budget
    scores = read_table(tmp_path / "run" / "scores" / "epoch_0000.parquet")
    assert table_metadata(scores)["task"] == "detection" and scores.num_rows == len(det)
    assert scores.column("ds").null_count == 0
    ids1, _ = sel.subset(1)  # within R: the same subset, no scoring
    assert np.array_equal(ids, ids1)
    # the scoring pass ran in the selector's batches (the reference's kept outputs are
    # keyed by batch); a detection dataset's default is 16 images, not 256
    assert sel.scorer.cache and {k[2] for k in sel.scorer.cache} == {8}
    rnd = cc.AdaptiveSelector(det, "random_epoch", 0.25, epochs=2)
    assert len(rnd.subset(0)[0]) == len(ids)
    assert rnd.scorer.batch_size == 16
    with pytest.raises(ValueError, match="free_scores"):
        cc.AdaptiveSelector(det, "rho", 0.25, epochs=2, free_scores=True, reference=ref)


# ------------------------------------------------------------------ COCO AP
def test_coco_ap_of_perfect_shifted_and_wrong_detections(made):
    from coreset_curate.tasks.detection.evaluate import ap_of_detections

    det = read_coco(made, "train")
    perfect = [{"boxes": b, "scores": np.ones(len(b)), "labels": c}
               for b, c in zip(det.boxes, det.classes)]
    assert ap_of_detections(det, perfect)["ap"] == pytest.approx(1.0)
    # boxes shifted by a fifth of their side: IoU 0.67, found at 0.50, missed at 0.75
    shifted = [{"boxes": b + np.c_[(b[:, 2] - b[:, 0]) / 5, np.zeros(len(b)),
                                   (b[:, 2] - b[:, 0]) / 5, np.zeros(len(b))],
                "scores": np.ones(len(b)), "labels": c} for b, c in zip(det.boxes, det.classes)]
    m = ap_of_detections(det, shifted)
    assert m["ap50"] == pytest.approx(1.0) and m["ap75"] == pytest.approx(0.0)
    wrong = [{"boxes": b, "scores": np.ones(len(b)), "labels": (c + 1) % 10}
             for b, c in zip(det.boxes, det.classes)]
    assert ap_of_detections(det, wrong)["ap"] == pytest.approx(0.0)
    empty = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}] * len(det)
    assert ap_of_detections(det, empty)["ap50"] == 0.0
