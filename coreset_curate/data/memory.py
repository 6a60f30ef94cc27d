"""Datasets decoded into memory: labels, sample ids, fingerprint, and batches by position.

Every image is decoded once into an ``(N, C, H, W)`` uint8 tensor (CIFAR-10 train is
150 MB), so training and scoring never wait on per-sample decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..common.checks import UnknownIds, align, positive_int
from ..common.fingerprint import FingerprintMismatch, check_fingerprint, fingerprint

__all__ = ["ImageData", "LabelledRows", "fingerprint", "check_fingerprint", "FingerprintMismatch",
           "iter_batches", "load_batches", "inference_batch_size", "spread_positions"]


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
        pos, present = align(sorted_ids, ids)
        missing = ~present
        if missing.any():
            raise UnknownIds(f"{int(missing.sum())} sample ids are not in the dataset, e.g. "
                           f"{ids[missing][:5].tolist()}")
        return order[pos]


@dataclass
class ImageData(LabelledRows):
    """A split decoded into memory (what ``load_data`` returns).

    Attributes:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` int64.
        sample_ids: ``(N,)`` int64 numpy array (the row position unless an id column was
            named).
        class_names: one per class.
        split: the split's name.
        name: the dataset's name.
        hf_dataset: the source ``datasets.Dataset`` when there is one.

    Raises:
        ValueError: ``images`` is not an ``(N, C, H, W)`` uint8 tensor, the split is
            empty, or labels, ids and class names do not fit it (lengths, duplicate
            ids, labels past the classes).
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



def inference_batch_size(device: "torch.device | str | None" = None) -> int:
    """Default batch size for evaluation and scoring: 256 on CPU, where larger batches fall
    out of cache and run slower (ResNet-20 W4A4 on 2 cores: 256 about 1.8x faster than
    1,000), and 1024 on CUDA."""
    from ..common.checks import resolve_device

    return 1024 if resolve_device(device).type == "cuda" else 256


def spread_positions(n: int, count: int) -> np.ndarray:
    """``count`` row positions spread evenly over ``n`` rows (all rows when fewer): the
    calibration rows, so that a split stored class by class gives every class its share."""
    return np.linspace(0, n - 1, min(n, count)).astype(np.int64)


def iter_batches(data, batch_size: int, positions: np.ndarray | None = None, *,
                 shuffle: bool = False, generator: torch.Generator | None = None,
                 view: str = "eval"):
    """Yield ``(positions, uint8 images, labels)`` over ``positions`` (default: all rows).

    ``view`` matters for streamed datasets only: ``"train"`` decodes random resized crops
    (seeded from ``generator``), ``"eval"`` the centre crops.
    """
    positive_int("batch_size", batch_size)
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
