"""Streamed datasets: images decoded batch by batch, cropped as they are decoded (the
ImageNet path), and the trainer on them with a teacher of another architecture."""

import io
import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from coreset_curate.data import default_transforms, iter_batches, load_data
from coreset_curate.common.index import epoch_rows, read_index
from coreset_curate.tasks.classification.models import create_model
from coreset_curate.data.stream import center_box, decode_one, random_resized_box
from coreset_curate.training import load_recipe, run_training
from coreset_curate.training import predict_logits

CLASSES = ["red", "green", "blue", "grey"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]])


def _photo(rng, k: int, w: int, h: int) -> np.ndarray:
    """A noisy image of class k's colour with a smooth gradient (learnable at any crop)."""
    ramp = np.linspace(-30, 30, w)[None, :, None]
    noise = rng.normal(0, 20, (h, w, 3))
    return np.clip(COLOURS[k] + ramp + noise, 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _photo_split(rng, n: int, fixed_size: int | None = None):
    images, labels = [], []
    for i in range(n):
        k = i % len(CLASSES)
        w, h = (fixed_size, fixed_size) if fixed_size else rng.integers(40, 110, 2)
        fmt = "PNG" if fixed_size else ("JPEG" if i % 5 else "PNG")
        mode = "L" if (not fixed_size and i % 17 == 3) else "RGB"  # a few grayscale images
        images.append({"bytes": _encode(_photo(rng, k, int(w), int(h)), fmt, mode),
                       "path": None})
        labels.append(k)
    return images, labels


FEATURES = datasets.Features({"image": datasets.Image(),
                              "label": datasets.ClassLabel(names=CLASSES)})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A Parquet folder (HF layout) of differently sized JPEG/PNG images, 4 classes."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, n in (("train", 160), ("test", 48)):
        images, labels = _photo_split(rng, n)
        ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=FEATURES)
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    return root


def _same_size_dataset(n=24, side=32):
    images, labels = _photo_split(np.random.default_rng(1), n, fixed_size=side)
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=FEATURES)


def test_streamed_eval_view_equals_in_memory_loading_for_crop_sized_images():
    ds = _same_size_dataset()
    memory = load_data(ds, "train")
    streamed = load_data(ds, "train", stream=True, crop_size=32, resize_size=32, num_workers=0)
    assert streamed.fingerprint == memory.fingerprint and streamed.image_shape == (3, 32, 32)
    a = [x for _, x, _ in iter_batches(memory, 10)]
    b = [x for _, x, _ in iter_batches(streamed, 10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) == 3
    train_tf, _ = default_transforms(streamed)
    assert train_tf.padding == 0 and train_tf.flip  # the crop happened while decoding
    assert default_transforms(memory)[0].padding == 4


def test_train_crops_depend_on_seed_and_position_not_on_workers(photos):
    data = load_data(photos, "train", stream=True, crop_size=32, num_workers=0)
    batches = [np.arange(0, 16), np.arange(16, 40), np.arange(40, 48)]
    here = [x for _, x, _ in data.decode_batches(batches, view="train", seed=5)]
    data.num_workers = 2
    workers = list(data.decode_batches(batches, view="train", seed=5))
    assert [p.tolist() for p, _, _ in workers] == [b.tolist() for b in batches]  # in order
    assert all(torch.equal(x, y) for x, (_, y, _) in zip(here, workers))
    assert all(torch.equal(data.labels[torch.as_tensor(b)], y)
               for b, (_, _, y) in zip(batches, workers))
    # the same sample gets the same crop in another batch; another seed, another crop
    alone = data.decode(np.array([20]), view="train", seed=5)
    assert torch.equal(alone[0], here[1][4])
    assert not torch.equal(data.decode(np.arange(16), view="train", seed=6), here[0])
    # the eval view is deterministic and differs from the random crops
    assert torch.equal(data.decode(np.arange(8)), data.decode(np.arange(8)))
    assert not torch.equal(data.decode(np.arange(8)), here[0][:8])


@settings(max_examples=200, deadline=None)
@given(w=st.integers(1, 400), h=st.integers(1, 400), seed=st.integers(0, 2**32 - 1))
def test_random_resized_box_lies_inside_with_area_and_ratio_in_range(w, h, seed):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    left, top, right, bottom = random_resized_box(w, h, scale, ratio,
                                                  np.random.default_rng(seed))
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    cw, ch = right - left, bottom - top
    if (cw, ch) != (w, h) and not (left == (w - cw) // 2 and top == (h - ch) // 2):
        # a sampled box (not the centre fallback): area and aspect ratio within range,
        # up to rounding each side to whole pixels
        area = cw * ch / (w * h)
        slack = (cw + ch + 1) / (w * h)
        assert scale[0] - slack <= area <= scale[1] + slack
        assert ratio[0] * (1 - 1 / ch) - 1 / ch <= cw / ch <= ratio[1] * (1 + 1 / ch) + 1 / ch


def test_eval_view_matches_resize_then_centre_crop():
    import torchvision.transforms.functional as TF

    yy, xx = np.mgrid[0:90, 0:120]  # smooth content: sub-pixel grid offsets barely matter
    arr = np.stack([128 + 100 * np.sin(xx / 15), 128 + 100 * np.cos(yy / 11),
                    (xx + yy)], -1).astype(np.uint8)
    ours = decode_one(_encode(arr, "PNG"), "eval", 56, 64, (0.08, 1), (0.75, 4 / 3), None)
    img = Image.fromarray(arr)
    ref = np.asarray(TF.center_crop(TF.resize(img, 64), 56))
    assert ours.shape == ref.shape == (56, 56, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 3.0
    assert center_box(120, 90, 56, 64) == pytest.approx((20.625, 5.625, 99.375, 84.375))


def test_jpeg_draft_decoding_is_used_and_close_to_full_decoding(monkeypatch):
    arr = _photo(np.random.default_rng(3), 1, 800, 600)
    jpeg = _encode(arr, "JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    lossless = _encode(decoded, "PNG")  # the same pixels a full JPEG decode gives
    from PIL import JpegImagePlugin

    calls = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: calls.append(size) or original(self, mode, size))
    fast = decode_one(jpeg, "eval", 64, 73, (0.08, 1), (0.75, 4 / 3), None)
    full = decode_one(lossless, "eval", 64, 73, (0.08, 1), (0.75, 4 / 3), None)
    assert calls == [(98, 73)]  # the 800x600 image with its shorter side at 73 (1/4 size)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4.0


def test_grayscale_images_become_rgb_and_a_corrupt_one_names_its_sample():
    gray = _encode(_photo(np.random.default_rng(4), 3, 50, 40), "PNG", mode="L")
    out = decode_one(gray, "eval", 32, 36, (0.08, 1), (0.75, 4 / 3), None)
    assert out.shape == (32, 32, 3) and (out[..., 0] == out[..., 1]).all()
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": gray, "path": None}, {"bytes": b"not an image", "path": None}],
         "label": [0, 1]}, features=FEATURES)
    data = load_data(ds, "train", stream=True, crop_size=32, num_workers=0)
    with pytest.raises(ValueError, match="sample id 1"):
        data.decode(np.array([0, 1]))


def test_image_folder_in_memory_and_streamed(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(12):
        k = i % 3
        d = tmp_path / "train" / CLASSES[k]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(rng, k, 32, 32)).save(d / f"img{i:02d}.png")
    (tmp_path / "train" / "notes.txt").write_text("not a class folder")
    memory = load_data(f"imagefolder:{tmp_path}", "train")
    assert memory.class_names == ["blue", "green", "red"]  # class folders sorted by name
    assert memory.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # each image sits under its colour: blue images are bluest, red ones reddest
    brightest = memory.images.float().mean(dim=(2, 3)).argmax(1)
    assert brightest.tolist() == [2] * 4 + [1] * 4 + [0] * 4
    streamed = load_data(f"imagefolder:{tmp_path}", "train", stream=True, crop_size=32,
                         resize_size=32, num_workers=0)
    assert streamed.fingerprint == memory.fingerprint
    assert torch.equal(streamed.decode(np.arange(12)), memory.images)
    sub = streamed.subset(np.array([11, 0]))
    assert sub.sample_ids.tolist() == [11, 0] and torch.equal(sub.decode(np.arange(2)),
                                                              memory.images[[11, 0]])


def test_streaming_errors_are_clear(photos):
    with pytest.raises(ValueError, match="small enough to load into memory"):
        load_data("digits", "train", stream=True)
    with pytest.raises(ValueError, match="apply to streamed datasets"):
        load_data(photos, "train", crop_size=64)
    with pytest.raises(ValueError, match="stream=True crops them"):
        load_data(photos, "train")  # images of many sizes cannot be stacked in memory
    with pytest.raises(ValueError, match="at least crop_size"):
        load_data(photos, "train", stream=True, crop_size=64, resize_size=32)
    data = load_data(photos, "train", stream=True, crop_size=32)
    with pytest.raises(ValueError, match="3 numbers"):
        default_transforms(data, mean=[0.5], std=[0.2])


# ------------------------------------------------------------------ the trainer, streamed
def _fp_checkpoint(path, arch, seed=0, classes=4):
    torch.manual_seed(seed)
    torch.save(create_model(arch, num_classes=classes).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def init_ckpt(photos, tmp_path_factory):
    """A full-precision small CNN trained briefly on the streamed photos."""
    out = tmp_path_factory.mktemp("fp-stream")
    run_training(load_recipe(None, [f"data={photos}", "model=small_cnn", "mode=fp",
                                    "stream=true", "crop_size=32", "data_workers=0",
                                    "epochs=3", "batch_size=32", "lr=0.05",
                                    "channels_last=false"]), out)
    return out / "model.pt"


def _streamed_qat(photos, init, teacher, **kw):
    values = [f"data={photos}", "model=small_cnn", "mode=qat", "stream=true", "crop_size=32",
              "data_workers=0", f"init={init}", f"teacher={teacher}", "teacher_model=resnet18",
              "w_bits=4", "a_bits=4", "epochs=3", "reselect_every=1", "batch_size=16",
              "optimizer=adam", "lr=0.001", "method=acs", "fraction=0.25",
              "channels_last=false", *[f"{k}={v}" for k, v in kw.items()]]
    return load_recipe(None, values)


def test_streamed_qat_distils_from_another_architecture_and_scores_against_init(
        photos, init_ckpt, tmp_path):
    teacher = _fp_checkpoint(tmp_path / "teacher.pt", "resnet18")
    summary = run_training(_streamed_qat(photos, init_ckpt, teacher), tmp_path / "run")
    assert summary["teacher_model"] == "resnet18" and summary["train_samples"] == 160
    index = read_index(tmp_path / "run" / "index.parquet")
    for epoch in range(3):
        ids, _ = epoch_rows(index, epoch)
        assert len(ids) == 40  # a quarter of each of 4 classes of 40
    # DS compares the student with the full-precision init (the reference), not the
    # teacher: ref_pred is the init model's prediction on the eval view
    scores = pq.read_table(tmp_path / "run" / "scores" / "epoch_0000.parquet").to_pandas()
    init = create_model("small_cnn", num_classes=4, in_channels=3)
    init.load_state_dict(torch.load(init_ckpt, weights_only=True))
    data = load_data(photos, "train", stream=True, crop_size=32, num_workers=0)
    _, eval_tf = default_transforms(data)
    preds = predict_logits(init, data, eval_tf, batch_size=64).argmax(1).numpy()
    assert np.array_equal(scores["ref_pred"].to_numpy(), preds)
    assert scores["ds"].mean() < 0.3  # W4A4 of the same weights stays close to them
    assert summary["calibrated_top1"] > 60 and summary["top1"] > 60  # colours are easy


def test_streamed_run_stops_and_resumes_to_the_same_model(photos, init_ckpt, tmp_path):
    teacher = _fp_checkpoint(tmp_path / "teacher.pt", "resnet18")
    cfg = _streamed_qat(photos, init_ckpt, teacher, epochs=2, method="random_epoch")
    run_training(cfg, tmp_path / "a")
    assert run_training(cfg, tmp_path / "b", stop_after=1) is None
    run_training(cfg, tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_trainer_refuses_a_teacher_of_another_architecture_without_init(photos, tmp_path):
    with pytest.raises(ValueError, match="set init=PATH"):
        load_recipe(None, [f"data={photos}", "model=small_cnn", "mode=qat",
                           f"teacher={tmp_path / 't.pt'}", "teacher_model=resnet18"])
    with pytest.raises(ValueError, match="apply to stream=true"):
        load_recipe(None, ["crop_size=224"])
    bad = _fp_checkpoint(tmp_path / "init.pt", "resnet20", classes=4)
    with pytest.raises(ValueError, match="init .* does not fit model 'small_cnn'"):
        run_training(_streamed_qat(photos, bad, bad, teacher_model="resnet20"), tmp_path / "r")


def test_imagenet_recipe_runs_on_a_small_stand_in(photos, tmp_path):
    """The ImageNet-1K recipe's own settings (ResNet-18 W4A4 from an FP ResNet-18, KD from a
    ResNet-101, Adam, ACS 10%, streamed random resized crops), with only the data, the
    checkpoints, the crop and the length swapped for a CPU test."""
    init = _fp_checkpoint(tmp_path / "resnet18.pt", "resnet18")
    teacher = _fp_checkpoint(tmp_path / "resnet101.pt", "resnet101")
    cfg = load_recipe("recipes/imagenet_resnet18_w4a4_acs_10.yaml", [
        f"data={photos}", "test_split=test", f"init={init}", f"teacher={teacher}",
        "init_sha256=null", "teacher_sha256=null", "crop_size=64", "resize_size=73",
        "epochs=2", "reselect_every=1", "batch_size=8", "data_workers=1", "limit_test=16"])
    assert (cfg.model, cfg.teacher_model, cfg.optimizer, cfg.lr) == (
        "resnet18", "resnet101", "adam", 1.25e-3)
    summary = run_training(cfg, tmp_path / "run")
    assert summary["w_bits"] == summary["a_bits"] == 4 and summary["epochs"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["subset_size"] for x in lines] == [16, 16]  # 10% of 4 classes of 40
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "teacher_model: resnet101" in config and "stream: true" in config


def test_torchrun_two_gloo_ranks_train_a_streamed_epoch(tmp_path):
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(7)
    for split, n in (("train", 64), ("test", 16)):
        for i in range(n):
            k = i % len(CLASSES)
            folder = tmp_path / "folder" / split / CLASSES[k]
            folder.mkdir(parents=True, exist_ok=True)
            w, h = rng.integers(40, 90, 2)
            Image.fromarray(_photo(rng, k, int(w), int(h))).save(folder / f"{i:03d}.jpg")
    env = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "ddp"
    sets = [f"data=imagefolder:{tmp_path / 'folder'}", "stream=true", "crop_size=32",
            "data_workers=1", "model=small_cnn", "epochs=1", "channels_last=false",
            "batch_size=16", "method=random_epoch", "fraction=0.5"]
    args = ["train", *[a for kv in sets for a in ("--set", kv)], "--out", str(out)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "coreset_curate", *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_samples"] == 64 and summary["test_samples"] == 16
    ids, _ = epoch_rows(read_index(out / "index.parquet"), 0)
    assert len(ids) == 32  # half of each of 4 classes of 16
    line = json.loads((out / "metrics.jsonl").read_text())
    assert line["subset_size"] == 32 and np.isfinite(line["train_loss"])


def test_cli_scores_and_audits_a_streamed_split(photos, init_ckpt, tmp_path, capsys):
    from coreset_curate.cli import main

    out = tmp_path / "scores.parquet"
    assert main(["score", "--data", str(photos), "--stream", "--crop-size", "32",
                 "--workers", "0", "--model", "small_cnn", "--checkpoint", str(init_ckpt),
                 "--reference", str(init_ckpt), "--w-bits", "4", "--a-bits", "4",
                 "--probs", "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 160 and table.column("ds").null_count == 0
    meta = json.loads(pq.read_schema(out).metadata[b"coreset_curate"])
    assert meta["fingerprint"]["length"] == 160
    assert main(["audit", "--scores", str(out), "--data", str(photos), "--stream",
                 "--out", str(tmp_path / "audit")]) == 0
    html = (tmp_path / "audit" / "report.html").read_text()
    flagged = pq.read_table(tmp_path / "audit" / "audit.parquet").column("flag").to_numpy()
    # every flagged sample shown gets a thumbnail decoded from the stream
    assert html.count("<div class='ex'><img src='data:image/png;base64,") == int(flagged.sum()) > 0
    assert main(["score", "--data", str(photos), "--crop-size", "32", "--model", "small_cnn",
                 "--checkpoint", str(init_ckpt), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "apply to --stream" in capsys.readouterr().err
