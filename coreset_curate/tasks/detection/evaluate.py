"""COCO box AP of a detector on a ``DetectionData`` split, computed by pycocotools.

``coco_ap(model, data)`` runs the model in eval mode over every image (float in [0, 1];
the model resizes and normalises them and maps its boxes back to the image), hands the
ground truth (crowd boxes as ``iscrowd``) and the detections to ``pycocotools.COCOeval``
in memory, and returns ``{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"}`` as
fractions (COCO's AP averaged over IoU 0.50:0.95, and at 0.50 and 0.75). pycocotools is
the reference implementation of the COCO metric (torchmetrics' ``MeanAveragePrecision``
calls it or a port of it), so these are the numbers the COCO leaderboards use.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ...common.checks import resolve_device
from .data import batch_of

__all__ = ["coco_ap", "coco_ground_truth", "ap_of_detections"]

KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def coco_ground_truth(data) -> dict:
    """The COCO dataset dict of ``data`` (boxes as xywh, COCO category ids)."""
    images, anns = [], []
    for i, img_id in enumerate(data.sample_ids.tolist()):
        h, w = data.image_size(i)
        images.append({"id": img_id, "width": int(w), "height": int(h)})
        for boxes, classes, crowd in ((data.boxes[i], data.classes[i], 0),
                                      (data.crowd[i], data.crowd_classes[i], 1)):
            for j, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64).tolist()):
                cat = data.category_ids[int(classes[j])]
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                             "iscrowd": crowd})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": n} for c, n in zip(data.category_ids,
                                                                 data.class_names)]}


def ap_of_detections(data, detections: list[dict]) -> dict[str, float]:
    """AP of ``detections`` (one dict an image of ``data``, in row order: ``boxes`` (n, 4)
    x1y1x2y2 pixels, ``scores`` (n,), ``labels`` (n,) contiguous class indices)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError("COCO AP needs pycocotools: pip install 'coreset-curate[detection]'"
                          ) from err
    if len(detections) != len(data):
        raise ValueError(f"{len(detections)} detection lists for {len(data)} images")
    results = []
    for img_id, det in zip(data.sample_ids.tolist(), detections):
        boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), np.asarray(det["scores"]).tolist(),
                                          np.asarray(det["labels"]).tolist()):
            results.append({"image_id": img_id, "category_id": data.category_ids[int(c)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    if not results:
        return dict.fromkeys(KEYS, 0.0)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = coco_ground_truth(data)
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # stats: AP@[.5:.95], AP50, AP75, AP small/medium/large; -1 where nothing to measure
    return {k: max(0.0, float(v)) for k, v in zip(KEYS, ev.stats[:6])}


@torch.no_grad()
def coco_ap(model, data, *, batch_size: int = 16, device=None) -> dict[str, float]:
    """COCO box AP of a torchvision-style detector on ``data`` (module doc)."""
    device = resolve_device(device)
    was = model.training
    model.eval().to(device)
    detections = []
    try:
        for start in range(0, len(data), batch_size):
            images = batch_of(data, range(start, min(start + batch_size, len(data))),
                              device=device)[0]
            for out in model(images):
                detections.append({k: out[k].cpu().numpy() for k in ("boxes", "scores",
                                                                      "labels")})
    finally:
        model.train(was)
    return ap_of_detections(data, detections)
