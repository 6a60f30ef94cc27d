"""Hugging Face detection datasets (an image column and an ``objects`` column with ``bbox``
and ``category``, the Hub's usual layout) to and from ``DetectionData``."""

from __future__ import annotations

import numpy as np

from ..common.checks import is_int
from .coco import BadAnnotation, DetectionData, LazyImages, _decode, _xyxy

__all__ = ["from_hf_detection", "to_hf_detection"]


def _hf_categories(feats) -> list[str] | None:
    """Class names of a Hugging Face ``objects`` column's ``category`` (None: plain ints)."""
    import datasets

    obj = feats["objects"]
    if isinstance(obj, (list, datasets.Sequence)):
        obj = obj[0] if isinstance(obj, list) else obj.feature
    cat = obj.get("category") if isinstance(obj, dict) else None
    if cat is None:
        raise ValueError("a Hugging Face detection dataset needs an 'objects' column with "
                         f"'bbox' and 'category'; it has {obj}")
    while isinstance(cat, (list, datasets.Sequence)):
        cat = cat[0] if isinstance(cat, list) else cat.feature
    return list(cat.names) if isinstance(cat, datasets.ClassLabel) else None


def from_hf_detection(ds, split: str, name: str, *, id_column: str | None = None,
                      image_column: str | None = None, stream: bool = False) -> DetectionData:
    """A Hugging Face detection dataset (an image column and an ``objects`` column with
    ``bbox`` as COCO's ``[x, y, width, height]`` pixels and ``category``, the Hub's usual
    layout) as a ``DetectionData``: ``sample_ids`` from ``id_column`` (default
    ``image_id`` where it exists, else the row number), class names from the category's
    ``ClassLabel``, category ids 1..K; images decoded now, or when read with
    ``stream=True``. Boxes are checked against the image sizes as ``read_coco`` checks
    them, and a bad one is named with its row. Streamed, the sizes come from ``width``
    and ``height`` columns where the dataset has both (each image is checked against
    them when it is decoded), else from each image file's header."""
    import datasets

    from .columns import find_column

    feats = ds.features
    image_column = find_column(feats, "image", image_column)
    if not isinstance(feats[image_column], datasets.Image):
        raise ValueError(f"column {image_column!r} must hold images; it is {feats[image_column]}")
    if id_column is None and "image_id" in feats:
        id_column = "image_id"
    names = _hf_categories(feats)
    plain = ds.cast_column(image_column, datasets.Image(decode=False))
    sized = stream and "width" in feats and "height" in feats
    cols = plain.select_columns([c for c in (image_column, "objects", id_column,
                                             *(("width", "height") if sized else ())) if c])
    rows = cols.to_dict()
    if names is None:
        top = max((max(o["category"], default=-1) for o in rows["objects"]), default=-1)
        names = [str(k) for k in range(top + 1)]
    ids = (np.asarray(rows[id_column], np.int64) if id_column
           else np.arange(len(ds), dtype=np.int64))
    images, boxes, classes, files = [], [], [], []
    for r, (enc, objs) in enumerate(zip(rows[image_column], rows["objects"])):
        what = f"row {r} (image {int(ids[r])})"
        source = enc.get("bytes") or enc.get("path")
        if stream:
            if sized:
                w, h = rows["width"][r], rows["height"][r]
                if not (is_int(w) and is_int(h) and w > 0 and h > 0):
                    raise BadAnnotation(f"{what}: width and height must be positive integers; "
                                        f"got {w!r} and {h!r}")
            else:
                import io

                from PIL import Image

                with Image.open(io.BytesIO(source) if isinstance(source, bytes)
                                else source) as im:
                    w, h = im.size
            images.append((source, (h, w), what))
        else:
            img = _decode(source, what)
            h, w = img.shape[1:]
            images.append(img)
        cats = list(objs.get("category") or [])
        bbs = list(objs.get("bbox") or [])
        if len(cats) != len(bbs):
            raise BadAnnotation(f"{what}: {len(bbs)} boxes but {len(cats)} categories")
        for j, c in enumerate(cats):
            if not isinstance(c, int) or not 0 <= c < len(names):
                raise BadAnnotation(f"{what}: object {j} has category {c!r}, not among the "
                                    f"{len(names)} classes")
        boxes.append(np.asarray([_xyxy(b, int(w), int(h), what, j) for j, b in enumerate(bbs)],
                                np.float32).reshape(-1, 4))
        classes.append(np.asarray(cats, np.int64))
        files.append(enc.get("path") or "")
    if stream and images:
        images = LazyImages(*map(list, zip(*images)))
    return DetectionData(images, boxes, classes, ids, names, list(range(1, len(names) + 1)),
                         split, name, files)


def to_hf_detection(data: DetectionData):
    """``data`` as a ``datasets.Dataset`` in the Hub's detection layout: ``image_id``,
    ``image`` (the files of a COCO split, or PNG-encoded tensors), ``width``, ``height``
    and ``objects`` (``bbox`` as COCO's ``[x, y, width, height]``, ``category`` a
    ``ClassLabel``), in row order; ``from_hf_detection`` reads it back to the same
    boxes, classes and fingerprint."""
    import io

    import datasets
    from PIL import Image

    images = []
    for i in range(len(data)):
        if isinstance(data.images, LazyImages) and not isinstance(data.images.sources[i], bytes):
            images.append({"path": str(data.images.sources[i]), "bytes": None})
        else:
            buf = io.BytesIO()
            Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(buf, format="PNG")
            images.append({"path": None, "bytes": buf.getvalue()})
    sizes = [data.image_size(i) for i in range(len(data))]
    objects = [{"bbox": np.c_[b[:, :2], b[:, 2:] - b[:, :2]].astype(np.float32).tolist(),
                "category": c.tolist()} for b, c in zip(data.boxes, data.classes)]
    features = datasets.Features({
        "image_id": datasets.Value("int64"), "image": datasets.Image(),
        "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "objects": datasets.Sequence({
            "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
            "category": datasets.ClassLabel(names=list(data.class_names))})})
    return datasets.Dataset.from_dict(
        {"image_id": data.sample_ids.tolist(), "image": images,
         "width": [w for _, w in sizes], "height": [h for h, _ in sizes], "objects": objects},
        features=features, split=data.split)
