"""Detection batches: images and targets of a subset (``batch_of``, with box-aware flips),
the calibration batches of a detector, and box-aware transforms (``hflip``, ``resize``).
The COCO-layout datasets themselves are a data source: ``data.coco`` (re-exported here).
"""

from __future__ import annotations

import numpy as np
import torch

from ...data.coco import BadAnnotation, DetectionData, LazyImages, read_coco
from ...data.coco_hf import from_hf_detection, to_hf_detection

__all__ = ["DetectionData", "LazyImages", "read_coco", "from_hf_detection", "to_hf_detection",
           "batch_of", "calibration_batches", "hflip", "resize", "BadAnnotation"]


def batch_of(data, positions, *, generator: torch.Generator | None = None,
             flip: bool = False, device="cpu") -> tuple[list[torch.Tensor], list[dict]]:
    """Images (float in [0, 1]) and targets of ``positions``; with ``flip``, each image is
    mirrored with probability 1/2 (its boxes follow), drawn from ``generator``."""
    images, targets = [], []
    for p in np.asarray(positions).tolist():
        img, boxes = data.images[p], data.boxes[p]
        if flip and float(torch.rand((), generator=generator)) < 0.5:
            img, boxes = hflip(img, boxes)
        images.append(img.to(device).float() / 255)
        targets.append({"boxes": torch.as_tensor(boxes, dtype=torch.float32).to(device),
                        "labels": torch.as_tensor(data.classes[p], dtype=torch.int64
                                                  ).to(device)})
    return images, targets


def calibration_batches(data, positions, *, batch_size: int = 16, device="cpu"):
    """The images of ``positions`` in batches of ``batch_size``, each as a one-element tuple
    (what ``quant.calibrate_`` takes: its first element goes into the model)."""
    positions = np.asarray(positions)
    return ((batch_of(data, positions[s:s + batch_size], device=device)[0],)
            for s in range(0, len(positions), batch_size))


# ------------------------------------------------------------------ box-aware transforms
def hflip(image: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The image mirrored left-right, and its boxes with it."""
    w = image.shape[-1]
    out = np.asarray(boxes, np.float32).copy()
    out[:, [0, 2]] = w - np.asarray(boxes, np.float32)[:, [2, 0]]
    return image.flip(-1), out


def resize(image: torch.Tensor, boxes: np.ndarray, size: tuple[int, int]
           ) -> tuple[torch.Tensor, np.ndarray]:
    """The image resized to ``size`` (height, width; bilinear, antialiased), and its boxes
    scaled with it."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    nh, nw = int(size[0]), int(size[1])
    if nh < 1 or nw < 1:
        raise ValueError(f"size must be positive; got {size}")
    x = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True,
                      align_corners=False)[0]
    out = np.asarray(boxes, np.float32) * np.array([nw / w, nh / h, nw / w, nh / h],
                                                   np.float32)
    return x.round().clamp(0, 255).to(torch.uint8), out
