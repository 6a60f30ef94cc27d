"""Datasets as decoded uint8 tensors in memory, with sample ids, a fingerprint and batched
transforms.

``load_data(source, split)`` accepts

* a Hugging Face ``datasets.Dataset`` or ``DatasetDict``;
* a folder, a file or a glob of Hugging Face-layout Parquet files (for example
  ``../shared/data/cifar10``, whose files are named ``train-*.parquet`` / ``test-*.parquet``);
* ``"torchvision:NAME"`` (``CIFAR10``, ``CIFAR100``, ``MNIST``, ``FashionMNIST``, ...) read
  from ``root``, downloading only with ``download=True``;
* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn;
  split ``train`` = rows whose index is not a multiple of 5, ``test`` = the others,
  ``all`` = every row).

Every image is decoded once into an ``(N, C, H, W)`` uint8 tensor (CIFAR-10 train is
150 MB), so training and scoring never wait on per-sample decoding; transforms work on
whole batches.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .progress import progress

__all__ = [
    "ImageData",
    "load_data",
    "EvalTransform",
    "TrainTransform",
    "default_transforms",
    "fingerprint",
    "check_fingerprint",
    "FingerprintMismatch",
    "parquet_dataset",
    "to_hf_dataset",
    "iter_batches",
    "load_batches",
    "LabelledRows",
]

log = logging.getLogger(__name__)

DIGITS_SPLITS = ("train", "test", "all")


class FingerprintMismatch(ValueError):
    """A table was made from another dataset than the one it is joined to."""


def fingerprint(labels: np.ndarray, split: str, sample_ids: np.ndarray | None = None) -> dict:
    """Split name, length and sha256 of the labels (int64, in row order) and of the ids."""
    labels = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    fp = {
        "split": str(split),
        "length": int(labels.shape[0]),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
    }
    if sample_ids is not None:
        ids = np.ascontiguousarray(np.asarray(sample_ids, dtype=np.int64))
        fp["ids_sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
    return fp


def check_fingerprint(expected: dict, actual: dict, what: str = "table") -> None:
    """Raise ``FingerprintMismatch`` unless two fingerprints describe the same samples.

    Length, labels and (when both carry them) ids must agree; the split name is only
    informative, since one dataset may be loaded under several names.
    """
    for key in ("length", "labels_sha256", "ids_sha256"):
        if key in expected and key in actual and expected[key] != actual[key]:
            raise FingerprintMismatch(
                f"{what} was made from another dataset: its {key} is {expected[key]!r} but the "
                f"dataset's is {actual[key]!r} (table split {expected.get('split')!r}, "
                f"dataset split {actual.get('split')!r})"
            )


class LabelledRows:
    """What every dataset of this toolkit shares, whether its images are decoded in memory
    (``ImageData``) or decoded batch by batch (``stream.StreamingImageData``): labels,
    sample ids, class names, the fingerprint and the id -> position map."""

    labels: torch.Tensor
    sample_ids: np.ndarray
    class_names: list[str]
    split: str
    name: str

    def _check_rows(self, n: int) -> None:
        if n == 0:
            raise ValueError(f"dataset {self.name!r} split {self.split!r} is empty")
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        self.sample_ids = np.asarray(self.sample_ids, dtype=np.int64)
        if self.labels.shape != (n,) or self.sample_ids.shape != (n,):
            raise ValueError("images, labels and sample_ids must have the same length")
        if len(np.unique(self.sample_ids)) != n:
            raise ValueError("sample ids must be unique")
        k = len(self.class_names)
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"labels must lie in 0..{k - 1} ({k} classes); found {lo}..{hi}")
        self._fingerprint = fingerprint(self.labels.numpy(), self.split, self.sample_ids)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fingerprint(self) -> dict:
        return dict(self._fingerprint)

    def positions(self, sample_ids: np.ndarray) -> np.ndarray:
        """Row positions of ``sample_ids``; raises if an id is not in the dataset."""
        ids = np.asarray(sample_ids, dtype=np.int64)
        order = np.argsort(self.sample_ids, kind="stable")
        sorted_ids = self.sample_ids[order]
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.clip(pos, 0, len(sorted_ids) - 1)
        missing = sorted_ids[pos] != ids
        if missing.any():
            raise KeyError(f"{int(missing.sum())} sample ids are not in the dataset, e.g. "
                           f"{ids[missing][:5].tolist()}")
        return order[pos]


@dataclass
class ImageData(LabelledRows):
    """A split decoded into memory.

    images: (N, C, H, W) uint8; labels: (N,) int64; sample_ids: (N,) int64 numpy array
    (the row position unless an id column was named); class_names: one per class.
    ``hf_dataset`` is the source ``datasets.Dataset`` when there is one.
    """

    images: torch.Tensor
    labels: torch.Tensor
    sample_ids: np.ndarray
    class_names: list[str]
    split: str
    name: str
    hf_dataset: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a (N, C, H, W) uint8 tensor")
        self._check_rows(int(self.images.shape[0]))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Exact per-channel mean and std of the pixels, scaled to [0, 1]."""
        x = self.images
        n = x.numel() // x.shape[1]
        s = x.sum(dim=(0, 2, 3), dtype=torch.int64).double()
        ss = _sumsq(x)
        mean = s / n
        std = (ss / n - mean**2).clamp_min(0).sqrt()
        return tuple((mean / 255).tolist()), tuple((std / 255).clamp_min(1e-3).tolist())

    def subset(self, positions: np.ndarray, split: str | None = None) -> ImageData:
        """A new ImageData with the rows at ``positions`` (ids kept)."""
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return ImageData(self.images[pos], self.labels[pos], self.sample_ids[pos.numpy()],
                         list(self.class_names), split or self.split, self.name)

    def with_labels(self, labels: np.ndarray | torch.Tensor) -> ImageData:
        """The same images with other labels (for example with injected noise)."""
        return ImageData(self.images, torch.as_tensor(np.asarray(labels), dtype=torch.int64),
                         self.sample_ids.copy(), list(self.class_names), self.split, self.name)


def _sumsq(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, x.shape[0], 4096):
        out += x[i : i + 4096].to(torch.int64).pow(2).sum(dim=(0, 2, 3)).double()
    return out


# ------------------------------------------------------------------ transforms
@dataclass(frozen=True)
class EvalTransform:
    """uint8 (N, C, H, W) -> float, scaled to [0, 1] and normalised per channel.

    Deterministic: the same batch always gives the same tensor.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"transforms take uint8 image batches; got {x.dtype}")
        return self.normalize(x)

    def to_dict(self) -> dict:
        return {"kind": type(self).__name__, **{k: getattr(self, k) for k in self.__dataclass_fields__}}


@dataclass(frozen=True)
class TrainTransform(EvalTransform):
    """Random crop with zero padding and (optionally) horizontal flip on a whole batch,
    then the same normalisation as ``EvalTransform``."""

    padding: int = 4
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"transforms take uint8 image batches; got {x.dtype}")
        n, c, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return self.normalize(x)


def default_transforms(train, *, flip: bool | None = None, padding: int | None = None,
                       mean=None, std=None) -> tuple[TrainTransform, EvalTransform]:
    """Train and eval transforms normalised with the statistics of ``train`` (or the given
    ``mean`` and ``std``, one per channel on the [0, 1] scale, for example the ones a
    pretrained model was trained with).

    Padding defaults to 1/8 of the image side (4 for 32x32), and to none for a streamed
    dataset, which crops while it decodes; flipping defaults to on, except for digit
    datasets where a mirrored digit is another symbol.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is None:
        mean, std = train.channel_stats()
    else:
        channels = train.image_shape[0]
        for name, v in (("mean", mean), ("std", std)):
            if (not isinstance(v, (list, tuple)) or len(v) != channels or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise ValueError(f"{name} must be {channels} numbers (one per channel); "
                                 f"got {v!r}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive; got {std!r}")
        mean, std = tuple(float(x) for x in mean), tuple(float(x) for x in std)
    if padding is None:
        padding = 0 if getattr(train, "crops_on_decode", False) \
            else max(1, train.image_shape[-1] // 8)
    if flip is None:
        flip = train.name not in ("digits", "torchvision:MNIST")
    return TrainTransform(mean, std, padding=padding, flip=flip), EvalTransform(mean, std)


# ------------------------------------------------------------------ loading
def load_data(
    source: Any,
    split: str = "train",
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    root: str | os.PathLike | None = None,
    download: bool = False,
    num_threads: int | None = None,
    stream: bool = False,
    crop_size: int | None = None,
    resize_size: int | None = None,
    num_workers: int | None = None,
):
    """Load one split of an image-classification dataset into memory (see module doc).

    ``stream=True`` keeps the images encoded and returns a ``stream.StreamingImageData``
    that decodes them batch by batch, cropped to ``crop_size`` (default 224; eval view:
    shorter side resized to ``resize_size``, default ``crop_size / 0.875``, then the centre
    crop) in ``num_workers`` processes: for datasets of many or differently sized images
    (ImageNet). It takes a Hugging Face dataset, Parquet files or ``imagefolder:PATH``.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string; got {split!r}")
    if not isinstance(stream, bool):
        raise ValueError(f"stream must be true or false; got {stream!r}")
    view = {"crop_size": 224 if crop_size is None else crop_size, "resize_size": resize_size,
            "num_workers": num_workers}
    if not stream and (crop_size is not None or resize_size is not None):
        raise ValueError("crop_size and resize_size apply to streamed datasets (stream=True); "
                         "in-memory datasets keep their images' size")
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"split {split!r} not in the DatasetDict; it has {list(source)}")
        source = source[split]
    if datasets is not None and isinstance(source, datasets.Dataset):
        return _from_hf(source, split, "hf:" + (source.info.dataset_name or "dataset"),
                        image_column, label_column, id_column, num_threads,
                        view if stream else None)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("source must be a datasets.Dataset/DatasetDict, a path or glob of "
                        f"Parquet files, 'torchvision:NAME' or 'digits'; got {type(source).__name__}")
    text = os.fspath(source)
    if text.startswith("imagefolder:"):
        return _image_folder(text, split, view if stream else None, num_threads)
    if stream and (text == "digits" or text.startswith("torchvision:")):
        raise ValueError(f"stream=True takes a Hugging Face dataset, Parquet files or "
                         f"'imagefolder:PATH'; {text!r} is small enough to load into memory")
    if text == "digits":
        return _digits(split)
    if text.startswith("torchvision:"):
        return _torchvision(text.split(":", 1)[1], split, root, download)
    ds = parquet_dataset(text, split)
    return _from_hf(ds, split, text, image_column, label_column, id_column, num_threads,
                    view if stream else None)


def parquet_dataset(source: str | os.PathLike, split: str = "train"):
    """The ``datasets.Dataset`` of one split of a folder, file or glob of Parquet files
    (nothing is decoded)."""
    import datasets

    return datasets.Dataset.from_parquet(_parquet_files(os.fspath(source), split), split=split)


def to_hf_dataset(data: ImageData):
    """``data`` as a ``datasets.Dataset`` with ``image`` (Image) and ``label`` (ClassLabel)
    columns, in row order: the source dataset itself when there is one."""
    import datasets

    if data.hf_dataset is not None:
        return data.hf_dataset
    if not hasattr(data, "images"):
        raise ValueError(f"{data.name!r} is streamed from an image folder: load it with "
                         "datasets.load_dataset('imagefolder', data_dir=...) to use it as a "
                         "datasets.Dataset")
    arr = data.images.permute(0, 2, 3, 1).numpy()
    images = [a[..., 0] if a.shape[-1] == 1 else a for a in arr]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(data.class_names))})
    return datasets.Dataset.from_dict({"image": images, "label": data.labels.tolist()},
                                      features=features, split=data.split)


def _parquet_files(text: str, split: str) -> list[str]:
    path = Path(text)
    if any(ch in text for ch in "*?["):
        files = sorted(glob.glob(text))
    elif path.is_file():
        files = [str(path)]
    elif path.is_dir():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split) or ".." in split:
            raise ValueError(f"split name {split!r} may hold only letters, digits, '.', '-' "
                             "and '_' (it names files inside the dataset folder)")
        files = []
        for pattern in (f"{split}-*.parquet", f"{split}.parquet", f"{split}/*.parquet",
                        f"*/{split}-*.parquet", f"*/{split}/*.parquet"):
            files = sorted(glob.glob(str(path / pattern)))
            if files:
                break
        if not files:
            present = sorted(p.name for p in path.glob("**/*.parquet"))[:10]
            raise FileNotFoundError(f"no Parquet file for split {split!r} in {text} (looked for "
                                    f"{split}-*.parquet, {split}.parquet, {split}/*.parquet); "
                                    f"found {present or 'no Parquet files'}")
    else:
        raise FileNotFoundError(f"data source {text!r} is not a file, a folder, a glob, "
                                "'torchvision:NAME' or 'digits'")
    if not files:
        raise FileNotFoundError(f"no file matches {text!r}")
    return files


def find_column(features, what: str, name: str | None) -> str:
    """The ``image`` or ``label`` column of a ``datasets`` feature dict (the first Image /
    ClassLabel feature, else a usual name), or ``name`` checked to exist."""
    import datasets

    if name is None and what in ("image", "label"):
        kind, usual = ((datasets.Image, ("img", "image")) if what == "image"
                       else (datasets.ClassLabel, ("label", "labels")))
        name = next((k for k, f in features.items() if isinstance(f, kind)), None)
        name = name or next((k for k in usual if k in features), None)
    if name is None or name not in features:
        raise ValueError(f"{what} column {name!r} not found; the dataset has columns "
                         f"{list(features)} (name it with {what}_column=)")
    return name


def _from_hf(ds, split, name, image_column, label_column, id_column, num_threads, view):
    import datasets

    feats = ds.features
    image_column = find_column(feats, "image", image_column)
    label_column = find_column(feats, "label", label_column)
    if id_column is not None:
        find_column(feats, "id", id_column)
    labels = np.asarray(ds.with_format("numpy")[label_column], dtype=np.int64)
    feat = feats[label_column]
    if isinstance(feat, datasets.ClassLabel):
        class_names = list(feat.names)
    else:
        class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    ids = (np.asarray(ds.with_format("numpy")[id_column], dtype=np.int64) if id_column
           else np.arange(len(ds), dtype=np.int64))
    if len(ds) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} is empty")
    if view is not None:
        from .stream import streaming_from_hf

        if not isinstance(feats[image_column], datasets.Image):
            raise ValueError(f"stream=True needs an Image column of encoded images; "
                             f"{image_column!r} is {feats[image_column]}")
        return streaming_from_hf(ds, split, name, image_column, labels, class_names, ids,
                                 **view)
    if isinstance(feats[image_column], datasets.Image):
        images = _decode_image_column(ds, image_column, num_threads)
    else:
        arr = np.asarray(ds.with_format("numpy")[image_column])
        images = _to_nchw_uint8(arr)
    return ImageData(images, torch.from_numpy(labels), ids, class_names, split, name, hf_dataset=ds)


def _image_folder(text: str, split: str, view: dict | None, num_threads) -> ImageData:
    """``imagefolder:ROOT``: the split is ``ROOT/SPLIT/CLASS/IMAGE`` files."""
    from .stream import image_folder_files, streaming_from_folder

    root = Path(text.split(":", 1)[1]) / split
    if view is not None:
        return streaming_from_folder(root, split, text, **view)
    paths, labels, classes = image_folder_files(root)
    images = _decode_all(paths, num_threads)
    return ImageData(images, torch.from_numpy(labels), np.arange(len(paths), dtype=np.int64),
                     classes, split, text)


def _decode_image_column(ds, column: str, num_threads: int | None) -> torch.Tensor:
    import datasets

    table = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    table = table.with_format("arrow")[:]
    structs = table.column(column).combine_chunks()
    blobs = structs.field("bytes").to_pylist()
    paths = structs.field("path").to_pylist()
    return _decode_all([b if b is not None else p for b, p in zip(blobs, paths)], num_threads)


def open_image(item):
    """A PIL image from encoded bytes or a file path (not decoded until its pixels are read)."""
    from PIL import Image

    return Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)


def _decode_all(items: list, num_threads: int | None) -> torch.Tensor:
    """Encoded images (bytes or paths) of one size and mode as an (N, C, H, W) uint8 tensor."""

    def decode(i: int) -> np.ndarray:
        return np.asarray(open_image(items[i]))

    n = len(items)
    first = decode(0)
    out = np.empty((n, *first.shape), dtype=np.uint8)
    workers = num_threads or min(4, os.cpu_count() or 1)
    chunk = 2048
    with ThreadPoolExecutor(workers) as pool, progress(total=n, desc="decode", unit="img") as bar:
        def run(start: int) -> int:
            for i in range(start, min(start + chunk, n)):
                a = decode(i)
                if a.shape != first.shape or a.dtype != np.uint8:
                    raise ValueError(
                        f"image {i} has shape {a.shape} ({a.dtype}), image 0 has {first.shape} "
                        "(uint8): in-memory loading needs images of one size and mode; "
                        "stream=True crops them to one size as it decodes")
                out[i] = a
            return min(start + chunk, n) - start

        for done in pool.map(run, range(0, n, chunk)):
            bar.update(done)
    return _to_nchw_uint8(out)


def _to_nchw_uint8(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8; got {arr.dtype}")
    if arr.ndim == 3:  # (N, H, W) grayscale
        arr = arr[:, None]
    elif arr.ndim == 4:
        arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    else:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C); got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _digits(split: str) -> ImageData:
    from sklearn.datasets import load_digits

    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits has splits {DIGITS_SPLITS}; got {split!r}")
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target.astype(np.int64)
    rows = np.arange(len(labels))
    keep = {"train": rows % 5 != 0, "test": rows % 5 == 0, "all": rows >= 0}[split]
    return ImageData(_to_nchw_uint8(images[keep]), torch.from_numpy(labels[keep]),
                     np.arange(int(keep.sum()), dtype=np.int64),
                     [str(c) for c in d.target_names], split, "digits")


def _torchvision(name: str, split: str, root, download: bool) -> ImageData:
    import torchvision

    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise ValueError(f"torchvision has no dataset {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"torchvision datasets here have splits 'train' and 'test'; got {split!r}")
    if root is None:
        raise ValueError("torchvision datasets need root= (a folder to read from or download to)")
    try:
        ds = cls(root=os.fspath(root), train=(split == "train"), download=download)
    except RuntimeError as err:
        raise FileNotFoundError(f"{name} not found under {root} ({err}); pass download=True "
                                "on a machine with internet") from err
    arr = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    labels = np.asarray(ds.targets, dtype=np.int64)
    classes = [str(c) for c in getattr(ds, "classes", range(int(labels.max()) + 1))]
    return ImageData(_to_nchw_uint8(arr.astype(np.uint8)), torch.from_numpy(labels),
                     np.arange(len(labels), dtype=np.int64), classes, split,
                     f"torchvision:{name}")


def inference_batch_size(device: "torch.device | str | None" = None) -> int:
    """Default batch size for evaluation and scoring: 256 on CPU, where larger batches fall
    out of cache and run slower (ResNet-20 W4A4 on 2 cores: 256 about 1.8x faster than
    1,000), and 1024 on CUDA."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 1024 if torch.device(device).type == "cuda" else 256


def iter_batches(data, batch_size: int, positions: np.ndarray | None = None, *,
                 shuffle: bool = False, generator: torch.Generator | None = None,
                 view: str = "eval"):
    """Yield ``(positions, uint8 images, labels)`` over ``positions`` (default: all rows).

    ``view`` matters for streamed datasets only: ``"train"`` decodes random resized crops
    (seeded from ``generator``), ``"eval"`` the centre crops.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    pos = torch.arange(len(data)) if positions is None else torch.as_tensor(
        np.asarray(positions, dtype=np.int64))
    if shuffle:
        pos = pos[torch.randperm(len(pos), generator=generator)]
    yield from load_batches(data, [pos[i : i + batch_size] for i in range(0, len(pos), batch_size)],
                            view=view, generator=generator)


def load_batches(data, batches: list, *, view: str = "eval",
                 generator: torch.Generator | None = None):
    """Yield ``(positions, uint8 images, labels)`` for each array of positions in
    ``batches``: indexed from memory, or decoded by a streamed dataset's workers (the train
    view's crops seeded by one draw from ``generator``)."""
    if not hasattr(data, "decode_batches"):
        for p in batches:
            p = torch.as_tensor(np.asarray(p, dtype=np.int64))
            yield p, data.images[p], data.labels[p]
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if view == "train" else 0
    yield from data.decode_batches(batches, view=view, seed=seed)
