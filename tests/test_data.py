import numpy as np
import pytest
import torch

from coreset_curate.data import (EvalTransform, FingerprintMismatch, ImageData, TrainTransform,
                                 check_fingerprint, default_transforms, fingerprint, iter_batches,
                                 load_data)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "train")


def test_digits_splits_partition_the_dataset():
    tr, te, al = (load_data("digits", s) for s in ("train", "test", "all"))
    assert (len(tr), len(te), len(al)) == (1437, 360, 1797)
    assert tr.images.dtype == torch.uint8 and tr.images.shape[1:] == (1, 8, 8)
    rows = np.arange(1797)
    assert torch.equal(tr.images, al.images[torch.as_tensor(rows[rows % 5 != 0])])
    assert torch.equal(te.labels, al.labels[torch.as_tensor(rows[rows % 5 == 0])])
    assert tr.class_names == [str(i) for i in range(10)]
    assert int(al.images.max()) == 255 and int(al.images.min()) == 0
    assert np.array_equal(tr.sample_ids, np.arange(1437))


def test_unknown_split_and_source_are_refused():
    with pytest.raises(ValueError, match="splits"):
        load_data("digits", "validation")
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_data("/no/such/place", "train")
    with pytest.raises(TypeError, match="source must be"):
        load_data(42)


def test_fingerprint_changes_with_one_label(digits):
    labels = digits.labels.numpy().copy()
    fp = fingerprint(labels, "train")
    assert fingerprint(labels.copy(), "train") == fp
    labels[17] = (labels[17] + 1) % 10
    changed = fingerprint(labels, "train")
    assert changed["labels_sha256"] != fp["labels_sha256"]
    with pytest.raises(FingerprintMismatch, match="labels_sha256"):
        check_fingerprint(fp, changed)
    assert digits.with_labels(labels).fingerprint["labels_sha256"] == changed["labels_sha256"]
    check_fingerprint(fp, {**fp, "split": "other-name"})  # names are informative only


def test_eval_transform_is_deterministic_and_normalises(digits):
    train_tf, eval_tf = default_transforms(digits)
    a, b = eval_tf(digits.images), eval_tf(digits.images)
    assert torch.equal(a, b)
    assert a.mean().abs() < 1e-4 and abs(float(a.std()) - 1) < 1e-3
    assert train_tf.flip is False  # a mirrored digit is another symbol
    with pytest.raises(TypeError, match="uint8"):
        eval_tf(a)


def test_train_transform_is_a_shifted_and_flipped_window():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=g)
    tf = TrainTransform((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), padding=2, flip=True)
    out = tf(x, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2)).float()
    flipped = 0
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.allclose(out[i], (lambda w: w.flip(-1) if f else w)(
                       padded[i, :, dy:dy + 12, dx:dx + 12]), atol=1e-3)]
        assert matches, f"sample {i} is not a window of its padded image"
        flipped += any(m[2] for m in matches) and not any(not m[2] for m in matches)
    assert 10 < flipped < 54  # about half are mirrored
    same = tf(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, same)  # seeded: reproducible
    plain = TrainTransform((0.0,) * 3, (1 / 255,) * 3, padding=0, flip=False)
    assert torch.equal(plain(x), EvalTransform((0.0,) * 3, (1 / 255,) * 3)(x))


def test_hf_dataset_and_parquet_folder_load_the_same_images(tmp_path, digits):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    n = 50
    imgs = [Image.fromarray(digits.images[i, 0].numpy(), mode="L") for i in range(n)]
    names = [f"digit-{i}" for i in range(10)]
    ds = datasets.Dataset.from_dict(
        {"image": imgs, "label": digits.labels[:n].tolist(), "uid": list(range(1000, 1000 + n))},
        features=datasets.Features({"image": datasets.Image(),
                                    "label": datasets.ClassLabel(names=names),
                                    "uid": datasets.Value("int64")}))
    a = load_data(ds, "train")
    assert torch.equal(a.images, digits.images[:n]) and torch.equal(a.labels, digits.labels[:n])
    assert a.class_names == names
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    b = load_data(tmp_path / "data", "train", id_column="uid")
    assert torch.equal(b.images, a.images) and b.class_names == names
    assert b.sample_ids.tolist() == list(range(1000, 1000 + n))
    assert b.positions(np.array([1049, 1000])).tolist() == [49, 0]
    with pytest.raises(KeyError, match="not in the dataset"):
        b.positions(np.array([5]))
    c = load_data(datasets.DatasetDict({"test": ds}), "test")
    assert torch.equal(c.images, a.images)
    with pytest.raises(FileNotFoundError, match="no Parquet file for split 'test'"):
        load_data(tmp_path / "data", "test")
    with pytest.raises(ValueError, match="label column 'nope' not found"):
        load_data(ds, label_column="nope")


def test_image_data_checks_its_inputs():
    imgs = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        ImageData(imgs, torch.tensor([0, 1, 2]), np.arange(3), ["a", "b"], "train", "t")
    with pytest.raises(ValueError, match="unique"):
        ImageData(imgs, torch.tensor([0, 1, 1]), np.array([0, 0, 1]), ["a", "b"], "train", "t")
    with pytest.raises(ValueError, match="empty"):
        ImageData(imgs[:0], torch.tensor([]), np.arange(0), ["a", "b"], "train", "t")


def test_iter_batches_covers_every_row_once(digits):
    seen = torch.cat([p for p, _, _ in iter_batches(digits, 100, shuffle=True,
                                                    generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(len(digits)))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(digits, 0))


def test_real_cifar10_loads_with_labels_and_class_names(cifar10_root):
    root = cifar10_root
    train, test = load_data(root, "train"), load_data(root, "test")
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                 "horse", "ship", "truck"]
    # first labels of the original data_batch_1 and test_batch
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean, std = train.channel_stats()  # the widely published CIFAR-10 statistics
    assert np.allclose(mean, (0.4914, 0.4822, 0.4465), atol=5e-4)
    assert np.allclose(std, (0.2470, 0.2435, 0.2616), atol=5e-4)


def _write_idx(path, array):
    import struct

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d)
                                                              for d in array.shape)
    path.write_bytes(header + array.tobytes())


def test_torchvision_dataset_reads_local_files_without_download(tmp_path):
    # torchvision's MNIST layout, written by hand: nothing is downloaded
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 20).astype(np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    data = load_data("torchvision:MNIST", "train", root=tmp_path)
    assert data.images.shape == (20, 1, 28, 28)
    assert np.array_equal(data.images[:, 0].numpy(), imgs)
    assert data.labels.tolist() == labels.tolist()
    assert data.class_names[0].startswith("0")
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_data("torchvision:FashionMNIST", "train", root=tmp_path)
    with pytest.raises(ValueError, match="no dataset 'NoSuch'"):
        load_data("torchvision:NoSuch", "train", root=tmp_path)
