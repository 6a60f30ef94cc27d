"""Reference (full-precision) outputs, computed once per dataset and reused by every
scoring round: the reference never changes during QAT.

What is stored: for up to ``DENSE_MAX_CLASSES`` classes, the reference's float32 softmax
of every sample (CIFAR-10: 2 MB, CIFAR-100: 20 MB), so scores computed from the cache are
identical to scores computed with a live reference forward. Above that (ImageNet-1K), the
``TOP_K`` = 64 largest probabilities of each sample in float16 with their class indices
(1.28M samples: 330 MB); the rest of the vector is taken as 0, so DS is exact up to the
norm of the reference's probabilities outside its top 64, ``||q_tail||_2 <=
sqrt(tail_mass * q_64)``, plus float16 rounding (relative 5e-4); ``ref_pred`` is exact and
``ref_prob_label`` is 0 where the label is outside the top 64.

The cache file is keyed by the dataset fingerprint, the reference checkpoint's sha256 and
the transform; an entry made for other data, another checkpoint or another transform is
never used. Files are ``.npz`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.checks import resolve_device
from ..data import EvalTransform, FingerprintMismatch, ImageData, check_fingerprint, \
    fingerprint, iter_batches
from ..common.progress import progress
from ..common.atomic import atomic_path

__all__ = ["ReferenceOutputs", "compute_reference", "cached_reference", "DENSE_MAX_CLASSES",
           "TOP_K"]

log = logging.getLogger(__name__)

DENSE_MAX_CLASSES = 256
TOP_K = 64
_FORMAT = 1


@dataclass
class ReferenceOutputs:
    """The reference softmax of every row of one dataset (dense, or top-k for many classes).

    Attributes:
        num_classes: the number of classes.
        labels: the dataset's labels, to check it is the same dataset.
        sample_ids: the dataset's sample ids.
        split: the dataset's split name.
        probs: ``(N, C)`` float32 softmax (up to ``DENSE_MAX_CLASSES`` classes), or None.
        top_probs: ``(N, TOP_K)`` float16 largest probabilities (many classes), or None.
        top_idx: ``(N, TOP_K)`` int32 class indices of ``top_probs``, or None.
        key: the cache key (dataset, checkpoint and transform), "" when not cached.
    """

    num_classes: int
    labels: np.ndarray
    sample_ids: np.ndarray
    split: str
    probs: torch.Tensor | None = None  # (N, C) float32
    top_probs: torch.Tensor | None = None  # (N, K) float16
    top_idx: torch.Tensor | None = None  # (N, K) int32
    key: str = ""

    @property
    def fingerprint(self) -> dict:
        """The fingerprint of the dataset these outputs belong to."""
        return fingerprint(self.labels, self.split, self.sample_ids)

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, positions: torch.Tensor, device=None) -> torch.Tensor:
        """Dense ``(B, C)`` float32 reference probabilities of the rows at ``positions``.

        Args:
            positions: row positions in the dataset.
            device: where to put the result (default: CPU).

        Returns:
            The probabilities; for top-k outputs, 0 outside each row's top k.
        """
        pos = torch.as_tensor(positions, dtype=torch.int64)
        if self.probs is not None:
            out = self.probs.index_select(0, pos)
        else:
            out = torch.zeros(len(pos), self.num_classes)
            out.scatter_(1, self.top_idx.index_select(0, pos).long(),
                         self.top_probs.index_select(0, pos).float())
        return out if device is None else out.to(device, non_blocking=True)

    def subset(self, positions: np.ndarray) -> ReferenceOutputs:
        """The outputs of the rows at ``positions`` (for a subset of the dataset).

        Args:
            positions: row positions.

        Returns:
            A new ``ReferenceOutputs`` with those rows, in that order.
        """
        pos = np.asarray(positions, dtype=np.int64)
        t = torch.from_numpy(pos)
        return ReferenceOutputs(
            self.num_classes, self.labels[pos], self.sample_ids[pos], self.split,
            None if self.probs is None else self.probs.index_select(0, t),
            None if self.top_probs is None else self.top_probs.index_select(0, t),
            None if self.top_idx is None else self.top_idx.index_select(0, t), self.key)

    def check(self, data: ImageData) -> None:
        """Check that these outputs were computed on ``data``.

        Args:
            data: the dataset about to be scored.

        Raises:
            FingerprintMismatch: (a ``ValueError``) they belong to other data.
        """
        check_fingerprint(self.fingerprint, data.fingerprint, "cached reference outputs")


@torch.inference_mode()
def compute_reference(reference: nn.Module, data: ImageData, transform: EvalTransform, *,
                      batch_size: int = 512, device=None) -> ReferenceOutputs:
    """One forward pass of ``reference`` over ``data`` (eval mode, eval transform).

    Args:
        reference: the full-precision model.
        data: the dataset.
        transform: its deterministic ``EvalTransform``.
        batch_size: samples per forward pass.
        device: where the model runs (default: CUDA when available, else CPU).

    Returns:
        The ``ReferenceOutputs`` of every row (not stored; see ``cached_reference``).
    """
    device = resolve_device(device)
    was_training = reference.training
    reference.eval().to(device)
    dense = data.num_classes <= DENSE_MAX_CLASSES
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        with progress(total=len(data), desc="reference", unit="img") as bar:
            for _, images, _ in iter_batches(data, batch_size):
                p = F.softmax(reference(transform(images.to(device))).float(), dim=1)
                if dense:
                    parts.append((p.cpu(),))
                else:
                    top = p.topk(min(TOP_K, p.shape[1]), dim=1)
                    parts.append((top.values.half().cpu(), top.indices.int().cpu()))
                bar.update(len(images))
    finally:
        reference.train(was_training)
    out = ReferenceOutputs(data.num_classes, data.labels.numpy().copy(), data.sample_ids.copy(),
                           data.split)
    if dense:
        out.probs = torch.cat([p[0] for p in parts])
    else:
        out.top_probs = torch.cat([p[0] for p in parts])
        out.top_idx = torch.cat([p[1] for p in parts])
    return out


def cache_key(data: ImageData, checkpoint_sha256: str, transform: EvalTransform) -> str:
    parts = {"format": _FORMAT, "fingerprint": data.fingerprint,
             "checkpoint": checkpoint_sha256, "transform": transform.to_dict(),
             "num_classes": data.num_classes}
    if hasattr(data, "view_key"):  # a streamed dataset: its crop decides the pixels too
        parts["view"] = data.view_key()
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_reference(reference: nn.Module, data: ImageData, transform: EvalTransform, *,
                     cache_dir: str | os.PathLike, checkpoint_sha256: str,
                     batch_size: int = 512, device=None) -> tuple[ReferenceOutputs, bool]:
    """Reference outputs from a cache, computed and stored on a miss.

    An entry is used only when it was made for exactly this dataset, checkpoint and
    transform; an unreadable entry is logged and recomputed.

    Args:
        reference: the full-precision model (run only on a miss).
        data: the dataset.
        transform: its deterministic ``EvalTransform``.
        cache_dir: the cache folder (created if missing).
        checkpoint_sha256: the reference checkpoint's sha256 (part of the key).
        batch_size: samples per forward pass on a miss.
        device: where the model runs on a miss.

    Returns:
        ``(outputs, True)`` from the cache, or ``(outputs, False)`` when computed now
        (and stored atomically).
    """
    key = cache_key(data, checkpoint_sha256, transform)
    path = Path(cache_dir) / f"reference-{key[:32]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    out = ReferenceOutputs(int(z["num_classes"]), z["labels"], z["sample_ids"],
                                           str(z["split"]), key=key)
                    if "probs" in z:
                        out.probs = torch.from_numpy(z["probs"])
                    else:
                        out.top_probs = torch.from_numpy(z["top_probs"])
                        out.top_idx = torch.from_numpy(z["top_idx"])
                    out.check(data)
                    log.info("reference outputs from cache %s", path)
                    return out, True
        except (OSError, ValueError, KeyError, FingerprintMismatch) as err:
            log.warning("ignoring unusable reference cache %s (%s)", path, err)
    out = compute_reference(reference, data, transform, batch_size=batch_size, device=device)
    out.key = key
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(key), "num_classes": np.array(out.num_classes),
              "labels": out.labels, "sample_ids": out.sample_ids, "split": np.array(out.split)}
    if out.probs is not None:
        arrays["probs"] = out.probs.numpy()
    else:
        arrays["top_probs"] = out.top_probs.numpy()
        arrays["top_idx"] = out.top_idx.numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return out, False
