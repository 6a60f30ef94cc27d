"""A COCO-layout detection set made from a classification split: objects pasted onto
canvases, their boxes and classes exact, deterministic by seed.

    make_coco(load_data("../shared/data/cifar10", "train"), "cifar-det", "train",
              count=4000, seed=0)
    det = read_coco("cifar-det", "train")

Each canvas is 96-128 px a side (``canvas``) with a smooth random background (a 4x4 grid of
random colours, bilinearly enlarged, plus a little noise); it holds 1-4 objects
(``objects``), each a source image of a random class resized to 24-56 px (``object_size``)
and pasted where it covers at most a quarter of every earlier object's box (``max_cover``;
a later object lies on top, and a box keeps its whole extent); an object that finds no such
place in 20 tries is left out. Boxes are exact integer pixels.
Category ids are the source classes plus one (COCO numbers its categories from 1); image
ids count from 1. ``class_noise`` relabels that share of the boxes to another class
uniformly (the truth stays in each annotation's ``true_category_id``), for experiments.

Written as ``ROOT/SPLIT/IMAGE_ID.png`` (lossless) and ``ROOT/annotations/instances_SPLIT.json``
last, each file atomically, so an annotation file present means a complete split.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from ...common.atomic import atomic_path, write_text
from ...common.checks import fraction as check_fraction, non_negative_int, positive_int

__all__ = ["make_coco"]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.uniform(40, 215, (1, 3, 4, 4)).astype(np.float32))
    smooth = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)[0]
    noisy = smooth.numpy() + rng.normal(0, 6, (3, h, w))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _covered(new: np.ndarray, old: np.ndarray) -> float:
    """The share of box ``old`` that box ``new`` covers."""
    ix = max(0.0, min(new[2], old[2]) - max(new[0], old[0]))
    iy = max(0.0, min(new[3], old[3]) - max(new[1], old[1]))
    return ix * iy / ((old[2] - old[0]) * (old[3] - old[1]))


def _resized(image: torch.Tensor, s: int) -> np.ndarray:
    import torch.nn.functional as F

    x = F.interpolate(image[None].float(), size=(s, s), mode="bilinear", antialias=True,
                      align_corners=False)[0]
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def _png(chw: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


def _check_layout(data, split: str, canvas, objects, object_size, class_noise) -> None:
    """Refuse what ``make_coco`` cannot lay out (a ``ValueError`` naming it)."""
    check_fraction("class_noise", class_noise, closed_low=True)
    if not hasattr(data, "images"):
        raise ValueError("make_coco pastes decoded images: give an in-memory split "
                         "(load_data without stream=True)")
    lo, hi = canvas
    if not 16 <= lo <= hi:
        raise ValueError(f"canvas must be (min, max) sides of at least 16 px; got {canvas}")
    if not 0 <= objects[0] <= objects[1]:
        raise ValueError(f"objects must be (min, max) counts; got {objects}")
    if not 4 <= object_size[0] <= object_size[1] <= lo:
        raise ValueError(f"object_size must be (min, max) sides within the smallest canvas "
                         f"({lo} px); got {object_size}")
    if not split or "/" in split or ".." in split:
        raise ValueError(f"split name {split!r} may not hold '/' or '..'")


def make_coco(data, root: str | os.PathLike, split: str = "train", *, count: int = 1000,
              seed: int = 0, canvas: tuple[int, int] = (96, 128),
              objects: tuple[int, int] = (1, 4), object_size: tuple[int, int] = (24, 56),
              max_cover: float = 0.25, class_noise: float = 0.0,
              overwrite: bool = False) -> Path:
    """Write ``count`` canvases of objects from ``data`` (an in-memory classification
    split of this toolkit, RGB or grayscale) in the COCO layout under ``root`` (module
    doc); returns the annotation file."""
    count, seed = positive_int("count", count), non_negative_int("seed", seed)
    _check_layout(data, split, canvas, objects, object_size, class_noise)
    lo, hi = canvas
    root = Path(root)
    ann_path = root / "annotations" / f"instances_{split}.json"
    if ann_path.exists() and not overwrite:
        raise FileExistsError(f"{ann_path} exists; pass overwrite=True (--overwrite)")
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xDE7EC7])
    k = data.num_classes
    src_images = data.images
    if src_images.shape[1] == 1:
        src_images = src_images.expand(-1, 3, -1, -1)
    labels = data.labels.numpy()
    images, annotations = [], []
    for img_id in range(1, count + 1):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        pixels = _background(rng, h, w)
        placed: list[np.ndarray] = []
        for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
            s = int(rng.integers(object_size[0], object_size[1] + 1))
            for _try in range(20):
                x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
                box = np.array([x, y, x + s, y + s], np.float64)
                if all(_covered(box, b) <= max_cover for b in placed):
                    break
            else:
                continue  # no room for this one
            src = int(rng.integers(0, len(labels)))
            pixels[:, y:y + s, x:x + s] = _resized(src_images[src], s)
            placed.append(box)
            true = int(labels[src])
            given = true
            if class_noise and rng.random() < class_noise:
                given = (true + int(rng.integers(1, k))) % k
            annotations.append({
                "id": len(annotations) + 1, "image_id": img_id, "category_id": given + 1,
                "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0,
                "true_category_id": true + 1, "source_id": int(data.sample_ids[src])})
        name = f"{img_id:06d}.png"
        with atomic_path(root / split / name) as tmp:
            Path(tmp).write_bytes(_png(pixels))
        images.append({"id": img_id, "file_name": name, "width": w, "height": h})
    doc = {"info": {"description": f"objects from {data.name} split {data.split} pasted on "
                    "canvases by coreset-curate make-detection", "seed": seed,
                    "class_noise": class_noise},
           "images": images, "annotations": annotations,
           "categories": [{"id": c + 1, "name": str(n)} for c, n in enumerate(data.class_names)]}
    write_text(ann_path, json.dumps(doc, separators=(",", ":")))
    return ann_path
