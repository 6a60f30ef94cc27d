"""The ``coco:`` data source (detection datasets): the COCO layout read into memory, keyed by image id, with boxes.

``load_data("coco:ROOT", "train2017")`` (or ``read_coco(ROOT, "train2017")``) reads
``ROOT/annotations/instances_SPLIT.json`` and the images in ``ROOT/SPLIT/``. Every image is
decoded once as a ``(3, H, W)`` uint8 tensor (grayscale and palette images are converted to
RGB; sizes may differ), with its boxes as ``(n, 4)`` float32 ``x1, y1, x2, y2`` pixels and
their classes as contiguous indices ``0..K-1`` (``category_ids[k]`` is class k's COCO id:
sparse ids such as COCO's 1..90 work). ``sample_ids`` are the COCO image ids. Crowd
annotations (``iscrowd: 1``) are kept apart (``crowd``), as COCO evaluation ignores them.

A bad annotation stops the read with an error that names the image and the annotation: a
box outside its image, of no area or of the wrong shape, an unknown category, an
annotation of an unknown image, a missing image file, an image whose size differs from
what the annotations say, a duplicate id.

``image_labels`` (one class per image: its most frequent, the smallest on ties, -1 for an
image without boxes) is what the score-table contract's ``label`` column holds. Hugging Face
detection datasets are read and written by ``coco_hf``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["DetectionData", "LazyImages", "read_coco", "BadAnnotation"]


class BadAnnotation(ValueError):
    """An annotation file that does not describe its images correctly."""


class LazyImages:
    """A split's images decoded when read: ``images[i]`` is a ``(3, H, W)`` uint8 RGB
    tensor decoded from a file path or encoded bytes, ``sizes[i]`` its ``(H, W)`` known
    without decoding. What a streamed detection split holds in place of a list of decoded
    tensors (COCO's 118k training images decoded would take about 100 GB); an image whose
    file differs in size from what its annotations say is named when it is read."""

    def __init__(self, sources: list, sizes: list[tuple[int, int]], names: list[str]) -> None:
        if not (len(sources) == len(sizes) == len(names)):
            raise ValueError("sources, sizes and names must have the same length")
        self.sources, self.names = list(sources), list(names)
        self.sizes = [(int(h), int(w)) for h, w in sizes]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = _decode(self.sources[i], self.names[i])
        if tuple(img.shape[1:]) != self.sizes[i]:
            raise BadAnnotation(f"{self.names[i]}: the file is {img.shape[2]}x{img.shape[1]} "
                                f"but the annotations say {self.sizes[i][1]}x{self.sizes[i][0]}")
        return img

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def select(self, positions) -> LazyImages:
        return LazyImages([self.sources[p] for p in positions],
                          [self.sizes[p] for p in positions], [self.names[p] for p in positions])


@dataclass
class DetectionData:
    """One split of a detection dataset in memory (see module doc)."""

    images: list[torch.Tensor] | LazyImages
    boxes: list[np.ndarray]
    classes: list[np.ndarray]
    sample_ids: np.ndarray
    class_names: list[str]
    category_ids: list[int]
    split: str
    name: str
    file_names: list[str] = field(default_factory=list)
    crowd: list[np.ndarray] = field(default_factory=list)
    crowd_classes: list[np.ndarray] = field(default_factory=list)
    # what the selector and the scorers read: a detection task, and a model that takes the
    # images as they are (it normalises and resizes them itself)
    task = "detection"
    transformed = True

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise ValueError(f"detection dataset {self.name!r} split {self.split!r} is empty")
        self.sample_ids = np.asarray(self.sample_ids, dtype=np.int64)
        if not (len(self.boxes) == len(self.classes) == len(self.sample_ids) == n):
            raise ValueError("images, boxes, classes and sample_ids must have the same length")
        if len(np.unique(self.sample_ids)) != n:
            raise ValueError("image ids must be unique")
        if not self.crowd:
            self.crowd = [np.zeros((0, 4), np.float32) for _ in range(n)]
        if not self.crowd_classes:
            self.crowd_classes = [np.zeros(len(c), np.int64) for c in self.crowd]
        k = len(self.class_names)
        lazy = isinstance(self.images, LazyImages)  # checked when decoded
        for i, (b, c) in enumerate(zip(self.boxes, self.classes)):
            img = None if lazy else self.images[i]
            if img is not None and (img.dtype != torch.uint8 or img.dim() != 3
                                    or img.shape[0] != 3):
                raise ValueError(f"image {int(self.sample_ids[i])} must be a (3, H, W) uint8 "
                                 "tensor")
            if b.shape != (len(c), 4):
                raise ValueError(f"image {int(self.sample_ids[i])}: boxes must be (n, 4) for "
                                 f"n classes; got {b.shape} for {len(c)}")
            if len(c) and (c.min() < 0 or c.max() >= k):
                raise ValueError(f"image {int(self.sample_ids[i])}: class outside 0..{k - 1}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> torch.Tensor:
        """``image_labels`` as a tensor: the label column of the score tables."""
        return torch.as_tensor(self.image_labels)

    @property
    def image_labels(self) -> np.ndarray:
        """Each image's most frequent class (the smallest on ties), -1 without boxes."""
        out = np.full(len(self), -1, np.int64)
        for i, c in enumerate(self.classes):
            if len(c):
                out[i] = int(np.argmax(np.bincount(c, minlength=self.num_classes)))
        return out

    @property
    def fingerprint(self) -> dict:
        """Split, length, sha256 of the ids and of the annotations (boxes and classes)."""
        h = hashlib.sha256()
        for b, c in zip(self.boxes, self.classes):
            h.update(np.int64(len(c)).tobytes())
            h.update(np.ascontiguousarray(b, np.float32).tobytes())
            h.update(np.ascontiguousarray(c, np.int64).tobytes())
        return {"split": self.split, "length": len(self),
                "ids_sha256": hashlib.sha256(self.sample_ids.tobytes()).hexdigest(),
                "annotations_sha256": h.hexdigest()}

    def image_size(self, i: int) -> tuple[int, int]:
        """(height, width) of image ``i``, without decoding a lazy one."""
        if isinstance(self.images, LazyImages):
            return self.images.sizes[i]
        return tuple(self.images[i].shape[1:])

    def positions(self, sample_ids) -> np.ndarray:
        from ..common.checks import UnknownIds, align

        ids = np.asarray(sample_ids, np.int64)
        order = np.argsort(self.sample_ids, kind="stable")
        pos, present = align(self.sample_ids[order], ids)
        if not present.all():
            raise UnknownIds(f"{int((~present).sum())} image ids are not in the dataset, e.g. "
                             f"{ids[~present][:5].tolist()}")
        return order[pos]

    def subset(self, positions) -> DetectionData:
        pos = [int(p) for p in np.asarray(positions, np.int64)]
        images = (self.images.select(pos) if isinstance(self.images, LazyImages)
                  else [self.images[p] for p in pos])
        return DetectionData(images, [self.boxes[p] for p in pos],
                             [self.classes[p] for p in pos], self.sample_ids[pos],
                             list(self.class_names), list(self.category_ids), self.split,
                             self.name, [self.file_names[p] for p in pos] if self.file_names
                             else [], [self.crowd[p] for p in pos],
                             [self.crowd_classes[p] for p in pos])


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no COCO annotation file {path} (the layout is "
                                "ROOT/annotations/instances_SPLIT.json, images in ROOT/SPLIT/)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadAnnotation(f"{path} is not valid JSON: {err}") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BadAnnotation(f"{path} has no list {key!r} (a COCO instances file has "
                                "images, annotations and categories)")
    return data


def _categories(cats: list, where: Path) -> tuple[dict[int, int], list[str], list[int]]:
    seen: dict[int, str] = {}
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise BadAnnotation(f"{where}: category {c!r} needs an integer id and a name")
        if c["id"] in seen:
            raise BadAnnotation(f"{where}: category id {c['id']} appears twice")
        seen[c["id"]] = str(c["name"])
    ids = sorted(seen)
    return {cid: k for k, cid in enumerate(ids)}, [seen[c] for c in ids], ids


def _decode(source, what: str) -> torch.Tensor:
    """A file path or encoded bytes as a (3, H, W) uint8 RGB tensor."""
    import io

    from PIL import Image

    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"{what}: image file {source} is missing")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as err:
        raise BadAnnotation(f"{what}: {source if not isinstance(source, bytes) else 'the image'}"
                            f" is not a readable image: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _xyxy(b, w: int, h: int, what: str, ann) -> list[float]:
    """A COCO ``[x, y, width, height]`` box checked against its ``w`` x ``h`` image, as
    ``x1, y1, x2, y2`` clipped to the image (half a pixel of slack)."""
    if not (isinstance(b, (list, tuple)) and len(b) == 4
            and all(isinstance(v, (int, float)) for v in b)):
        raise BadAnnotation(f"{what}: annotation {ann} has bbox {b!r}; expected "
                            "[x, y, width, height]")
    x, y, bw, bh = map(float, b)
    if bw <= 0 or bh <= 0:
        raise BadAnnotation(f"{what}: annotation {ann} has a box of no area ({list(b)})")
    if x < -0.5 or y < -0.5 or x + bw > w + 0.5 or y + bh > h + 0.5:
        raise BadAnnotation(f"{what}: annotation {ann} box {list(b)} lies outside the "
                            f"{w}x{h} image")
    return [max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)]


def _indexed(data: dict, ann_path: Path) -> tuple[dict[int, dict], dict[int, list]]:
    """The image entries by id, and every image's annotations."""
    images: dict[int, dict] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width",
                                                                  "height")):
            raise BadAnnotation(f"{ann_path}: image entry {im!r} needs id, file_name, width "
                                "and height")
        if im["id"] in images:
            raise BadAnnotation(f"{ann_path}: image id {im['id']} appears twice")
        images[int(im["id"])] = im
    per_image: dict[int, list] = {i: [] for i in images}
    for a in data["annotations"]:
        img_id = a.get("image_id") if isinstance(a, dict) else None
        if img_id not in images:
            raise BadAnnotation(f"{ann_path}: annotation {a.get('id') if isinstance(a, dict) else a!r} "
                                f"refers to image {img_id!r}, which is not in images")
        per_image[img_id].append(a)
    return images, per_image


def _image_boxes(anns: list, index: dict[int, int], cat_ids: list[int], w: int, h: int,
                 what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's (boxes, classes) and its crowd (boxes, classes), checked."""
    boxes, classes, crowd, crowd_cls = [], [], [], []
    for a in anns:
        xyxy = _xyxy(a.get("bbox"), w, h, what, a.get("id"))
        if a.get("category_id") not in index:
            raise BadAnnotation(f"{what}: annotation {a.get('id')} has category "
                                f"{a.get('category_id')!r}, not among the categories "
                                f"{cat_ids[:10]}{'...' if len(cat_ids) > 10 else ''}")
        if a.get("iscrowd"):
            crowd.append(xyxy)
            crowd_cls.append(index[a["category_id"]])
        else:
            boxes.append(xyxy)
            classes.append(index[a["category_id"]])
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64),
            np.asarray(crowd, np.float32).reshape(-1, 4), np.asarray(crowd_cls, np.int64))


def read_coco(root: str | os.PathLike, split: str = "train", *, stream: bool = False
              ) -> DetectionData:
    """One split of a COCO-layout dataset (see module doc). ``stream=True`` decodes each
    image when it is read (``LazyImages``) instead of all of them now: for COCO itself; a
    missing file is still named now, a mis-sized one when it is read."""
    root = Path(root)
    if not split or "/" in split or ".." in split:
        raise ValueError(f"split name {split!r} may not hold '/' or '..'")
    ann_path = root / "annotations" / f"instances_{split}.json"
    data = _load_json(ann_path)
    index, names, cat_ids = _categories(data["categories"], ann_path)
    images, per_image = _indexed(data, ann_path)
    ids = sorted(images)
    out_images, out_boxes, out_classes, out_crowd, files = [], [], [], [], []
    out_crowd_cls = []
    for img_id in ids:
        im = images[img_id]
        what = f"image {img_id} ({im['file_name']})"
        w, h = int(im["width"]), int(im["height"])
        boxes, classes, crowd, crowd_cls = _image_boxes(per_image[img_id], index, cat_ids,
                                                        w, h, what)
        path = root / split / im["file_name"]
        if stream:
            if not path.is_file():
                raise FileNotFoundError(f"{what}: image file {path} is missing")
            out_images.append((path, (h, w), what))
        else:
            img = _decode(path, what)
            if tuple(img.shape[1:]) != (h, w):
                raise BadAnnotation(f"{what}: the file is {img.shape[2]}x{img.shape[1]} but "
                                    f"the annotations say {w}x{h}")
            out_images.append(img)
        out_boxes.append(boxes)
        out_classes.append(classes)
        out_crowd.append(crowd)
        out_crowd_cls.append(crowd_cls)
        files.append(str(im["file_name"]))
    if stream and out_images:
        out_images = LazyImages(*map(list, zip(*out_images)))
    return DetectionData(out_images, out_boxes, out_classes, np.asarray(ids, np.int64), names,
                         cat_ids, split, f"coco:{root}", files, out_crowd, out_crowd_cls)
