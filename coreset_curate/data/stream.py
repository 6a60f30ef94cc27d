"""Datasets too large to decode into memory (ImageNet-1K's training split is about 190 GB
as uint8): the images stay encoded, as JPEG/PNG bytes in a Hugging Face dataset's Arrow
files or as the files of an image folder, and are decoded batch by batch in DataLoader
worker processes, cropped to one fixed size as they are decoded.

    train = load_data("path/to/imagenet-1k", "train", stream=True, crop_size=224)
    test = load_data("path/to/imagenet-1k", "validation", stream=True, crop_size=224)

Two views of every sample:

* ``eval``: resize the shorter side to ``resize_size`` (default ``crop_size / 0.875``, 256
  for 224) and take the centre ``crop_size`` square; deterministic. Scoring, the reference,
  calibration and evaluation read this view.
* ``train``: a random resized crop (area ``scale`` = 8% to 100% of the image, aspect ratio
  ``ratio`` = 3/4 to 4/3, as torchvision's ``RandomResizedCrop``) resized to ``crop_size``.
  The crop of a sample depends only on the epoch's seed and the sample's position, not on
  which worker decodes it, so a run is reproducible whatever the number of workers.

Horizontal flips and normalisation stay in the batched ``TrainTransform`` /
``EvalTransform`` (``default_transforms`` gives no padding for these datasets). JPEGs are
decoded at the smallest power-of-two reduction (``PIL.Image.draft``) that still leaves the
crop at least ``crop_size`` pixels wide and high, which saves most of the decoding time on
large photos and changes pixels only by the resampling (``benchmarks/stream_decode.py``: no
gain at ImageNet's usual 500x375 with 224 crops, where no reduction is small enough; 1.6x
to 1.8x on photos 2.5 times that size).

A ``StreamingImageData`` has what an ``ImageData`` has except ``images``: labels, sample
ids, fingerprint, ``positions``, ``subset``, ``with_labels``; ``iter_batches`` of
``coreset_curate.data`` yields its batches as uint8 tensors like an in-memory dataset's.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .decode import open_image
from .memory import LabelledRows
from ..common.checks import non_negative_int, positive_int

__all__ = ["StreamingImageData", "IMAGE_SUFFIXES", "default_workers", "image_folder_files"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
VIEWS = ("eval", "train")


def default_workers() -> int:
    """Decoding processes: one per core but one (the training process keeps a core), at
    most 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


class _ArrowImages:
    """Encoded images of a ``datasets.Dataset`` image column, read by row without decoding
    (the Arrow files are memory-mapped, so random access is cheap and workers share them)."""

    def __init__(self, ds, column: str) -> None:
        import datasets

        self.ds = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        self.column = column

    def __len__(self) -> int:
        return len(self.ds)

    def get(self, rows: np.ndarray) -> list:
        table = self.ds.with_format("arrow")[[int(r) for r in rows]]
        structs = table.column(self.column).combine_chunks()
        blobs = structs.field("bytes").to_pylist()
        paths = structs.field("path").to_pylist()
        return [b if b is not None else p for b, p in zip(blobs, paths)]


class _FileImages:
    """Images as files on disk (an image folder)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, rows: np.ndarray) -> list:
        return [self.paths[int(r)] for r in rows]


def image_folder_files(root: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """``root/CLASS/**/IMAGE`` (torchvision's ImageFolder layout): the image paths in sorted
    order, their labels (the class folders, sorted by name) and the class names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"image folder {root} has no class sub-folders (expected "
                                "ROOT/CLASS/IMAGE files)")
    paths, labels = [], []
    for k, name in enumerate(classes):
        files = sorted(str(p) for p in (root / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return paths, np.asarray(labels, dtype=np.int64), classes


def random_resized_box(w: int, h: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering ``scale`` of the area with an
    aspect ratio in ``ratio`` (log-uniform); after 10 misses, the centre crop with the ratio
    clamped into ``ratio``, as torchvision's ``RandomResizedCrop`` does."""
    area = w * h
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return left, top, left + cw, top + ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def center_box(w: int, h: int, crop: int, resize: int) -> tuple[float, float, float, float]:
    """The box of the original image that "resize the shorter side to ``resize``, take the
    centre ``crop`` square" keeps (a side shorter than the crop keeps the whole side)."""
    side = min(w, h) * crop / resize
    bw, bh = min(side, w), min(side, h)
    left, top = (w - bw) / 2, (h - bh) / 2
    return left, top, left + bw, top + bh


def decode_one(item, view: str, crop: int, resize: int, scale, ratio,
               rng: np.random.Generator | None, draft: bool = True) -> np.ndarray:
    """One encoded image as a (crop, crop, 3) uint8 array in the given view (``draft``:
    decode JPEGs at a reduced size where the crop allows)."""
    from PIL import Image

    img = open_image(item)
    w, h = img.size
    box = (random_resized_box(w, h, scale, ratio, rng) if view == "train"
           else center_box(w, h, crop, resize))
    if draft and img.format == "JPEG":
        bw, bh = box[2] - box[0], box[3] - box[1]
        want = (math.ceil(w * crop / bw), math.ceil(h * crop / bh))
        if want[0] < w and want[1] < h:
            img.draft("RGB", want)  # decode at 1/2, 1/4 or 1/8 size when that is enough
            sx, sy = img.size[0] / w, img.size[1] / h
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    if img.mode != "RGB":
        img = img.convert("RGB")
    out = img.resize((crop, crop), Image.BILINEAR, box=tuple(float(b) for b in box))
    return np.asarray(out, dtype=np.uint8)


@dataclass
class StreamingImageData(LabelledRows):
    """A split whose images are decoded batch by batch (see the module doc).

    ``source`` maps rows to encoded images; ``rows[i]`` is the source row of sample i.
    """

    labels: torch.Tensor
    sample_ids: np.ndarray
    class_names: list[str]
    split: str
    name: str
    source: Any = field(repr=False)
    rows: np.ndarray | None = None
    crop_size: int = 224
    resize_size: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    num_workers: int | None = None
    draft: bool = True
    hf_dataset: Any = field(default=None, repr=False)

    # the batched train transform must not crop again: the crop happens while decoding
    crops_on_decode = True

    def __post_init__(self) -> None:
        for name in ("crop_size",) + (("resize_size",) if self.resize_size is not None else ()):
            v = getattr(self, name)
            positive_int(name, v)
        if self.resize_size is None:
            self.resize_size = int(round(self.crop_size / 0.875))
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be at least crop_size "
                             f"({self.crop_size})")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"scale must be 0 < low <= high <= 1; got {self.scale!r}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"ratio must be 0 < low <= high; got {self.ratio!r}")
        if self.num_workers is not None:
            non_negative_int("num_workers", self.num_workers)
        n = len(self.labels)
        self.rows = (np.arange(n, dtype=np.int64) if self.rows is None
                     else np.asarray(self.rows, dtype=np.int64))
        if self.rows.shape != (n,):
            raise ValueError("rows must hold one source row per sample")
        if n and (self.rows.min() < 0 or self.rows.max() >= len(self.source)):
            raise ValueError(f"rows reach {int(self.rows.max())} but the source has "
                             f"{len(self.source)} images")
        self._check_rows(n)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.crop_size, self.crop_size)

    def view_key(self) -> dict:
        """What decides the eval view's pixels (part of the reference cache's key)."""
        return {"crop_size": self.crop_size, "resize_size": self.resize_size,
                "draft": self.draft}

    def subset(self, positions: np.ndarray, split: str | None = None) -> StreamingImageData:
        """The rows at ``positions`` (ids kept), still streaming."""
        pos = np.asarray(positions, dtype=np.int64)
        return replace(self, hf_dataset=None, labels=self.labels[torch.as_tensor(pos)],
                       sample_ids=self.sample_ids[pos], rows=self.rows[pos],
                       class_names=list(self.class_names), split=split or self.split)

    def with_labels(self, labels) -> StreamingImageData:
        """The same images with other labels (for example with injected noise)."""
        return replace(self, hf_dataset=None,
                       labels=torch.as_tensor(np.asarray(labels), dtype=torch.int64),
                       sample_ids=self.sample_ids.copy())

    def decode(self, positions: np.ndarray, view: str = "eval", seed: int = 0) -> torch.Tensor:
        """The samples at ``positions`` as a (n, 3, crop, crop) uint8 tensor, decoded in this
        process. In the train view, sample at position p gets the crop of (seed, p)."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}; got {view!r}")
        pos = np.asarray(positions, dtype=np.int64)
        items = self.source.get(self.rows[pos])
        out = np.empty((len(pos), self.crop_size, self.crop_size, 3), dtype=np.uint8)
        for j, (p, item) in enumerate(zip(pos, items)):
            rng = np.random.default_rng([seed, int(p)]) if view == "train" else None
            try:
                out[j] = decode_one(item, view, self.crop_size, self.resize_size, self.scale,
                                    self.ratio, rng, self.draft)
            except (OSError, ValueError, SyntaxError) as err:
                raise ValueError(f"cannot decode the image of sample id "
                                 f"{int(self.sample_ids[p])} ({self.name}, split "
                                 f"{self.split}): {err}") from err
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def decode_batches(self, batches: list, view: str = "eval", seed: int = 0):
        """Yield ``(positions, uint8 images, labels)`` for each array of positions in
        ``batches``, in order, decoded by ``num_workers`` worker processes (0: here)."""
        workers = default_workers() if self.num_workers is None else self.num_workers
        jobs = _Batches(self, batches, view, seed)
        if workers == 0 or len(batches) <= 1:
            yield from (jobs[k] for k in range(len(jobs)))
            return
        # two batches in flight per worker: at 512 crops of 224 a batch is 77 MB (pinned)
        loader = torch.utils.data.DataLoader(
            jobs, batch_size=None, shuffle=False,
            num_workers=min(workers, len(batches)), prefetch_factor=2,
            pin_memory=torch.cuda.is_available(), worker_init_fn=_one_thread)
        yield from loader

    def channel_stats(self, max_samples: int = 1024) -> tuple[tuple[float, ...],
                                                              tuple[float, ...]]:
        """Per-channel mean and std of the eval view, estimated on up to ``max_samples``
        evenly spaced samples (deterministic), scaled to [0, 1]."""
        pos = np.unique(np.linspace(0, len(self) - 1, min(max_samples, len(self))).astype(int))
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        count = 0
        for start in range(0, len(pos), 256):
            x = self.decode(pos[start:start + 256]).double()
            total += x.sum(dim=(0, 2, 3))
            total_sq += x.pow(2).sum(dim=(0, 2, 3))
            count += x.numel() // 3
        mean = total / count
        std = (total_sq / count - mean**2).clamp_min(0).sqrt()
        return tuple((mean / 255).tolist()), tuple((std / 255).clamp_min(1e-3).tolist())


class _Batches(torch.utils.data.Dataset):
    """Batch k of a list of position arrays, decoded in a worker process."""

    def __init__(self, data: StreamingImageData, batches: list, view: str, seed: int) -> None:
        self.data, self.view, self.seed = data, view, seed
        self.batches = [np.asarray(b, dtype=np.int64) for b in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        p = self.batches[k]
        return (torch.from_numpy(p), self.data.decode(p, self.view, self.seed),
                self.data.labels[torch.from_numpy(p)])


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the workers decode with PIL; torch threads would oversubscribe


def streaming_from_hf(ds, split: str, name: str, image_column: str, labels: np.ndarray,
                      class_names: list[str], ids: np.ndarray, **view) -> StreamingImageData:
    return StreamingImageData(torch.from_numpy(labels), ids, class_names, split, name,
                              source=_ArrowImages(ds, image_column), hf_dataset=ds, **view)


def streaming_from_folder(root: str | os.PathLike, split: str, name: str,
                          **view) -> StreamingImageData:
    paths, labels, classes = image_folder_files(root)
    return StreamingImageData(torch.from_numpy(labels), np.arange(len(paths), dtype=np.int64),
                              classes, split, name, source=_FileImages(paths), **view)
