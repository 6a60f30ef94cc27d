"""Per-image scores of a detector: the score-table contract, one row per image.

The paper defines EVS and DS for classifiers only, so these definitions are the project's
own. From one forward pass of the student (and of the full-precision reference) through a
RetinaNet's own transform, backbone, head and anchors, with the ground-truth boxes matched
to the anchors by the model's own matcher (IoU >= 0.5 foreground, < 0.4 background):

* ``evs``: over the foreground anchors (those matched to a box), the mean L2 distance of
  the sigmoid class scores from the one-hot target of the matched box's class: the
  classifier's EVS on every anchor that should see an object. An image without boxes has
  no foreground anchor: its ``evs`` is the mean L2 norm of the sigmoid scores of its 100
  most confident anchors (the distance from the all-zero target there).
* ``ds``: the mean L2 distance between the student's and the reference's sigmoid scores
  over the anchors where either is confident (a score of at least 0.05, the detector's own
  score threshold), 0 where neither is; null without a reference.
* ``loss``: the student's focal loss (summed over the anchors that are not ignored,
  divided by the foreground count) plus its L1 box loss on the foreground anchors, as
  RetinaNet trains; ``box_loss`` the second term alone.
* ``label`` is the image's most frequent class (``DetectionData.image_labels``), -1 for an
  image without boxes; ``pred`` the class of the student's most confident anchor;
  ``prob_label`` the mean sigmoid score of the matched box's class over the foreground
  anchors (1 - the highest score for an image without boxes); ``margin`` that minus the
  mean of the highest other class score; ``entropy`` the mean binary entropy of the
  scores over the foreground anchors (over the 100 most confident without boxes);
  ``max_prob`` the highest score of the image; ``ref_pred`` / ``ref_prob_label`` the
  reference's ``pred`` and ``prob_label``. ``num_boxes`` and ``fg_anchors`` are added.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from ...common.checks import resolve_device

__all__ = ["head_outputs", "image_scores", "score_detections"]

CONFIDENT = 0.05
TOP_ANCHORS = 100


@torch.no_grad()
def head_outputs(model, images: list[torch.Tensor], targets: list[dict] | None = None):
    """(class logits (N, A, K), box deltas (N, A, 4), anchors per image, targets resized as
    the model resized the images) from one pass through a RetinaNet's parts."""
    batch, resized = model.transform(images, targets)
    features = list(model.backbone(batch.tensors).values())
    out = model.head(features)
    anchors = model.anchor_generator(batch, features)
    return out["cls_logits"], out["bbox_regression"], anchors, resized


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def _reference_columns(prob: torch.Tensor, rp: torch.Tensor, fg: torch.Tensor,
                       fg_class: torch.Tensor | None) -> tuple[float, int, float]:
    """(ds, ref_pred, ref_prob_label) of one image from the student's and the reference's
    anchor probabilities; ``fg_class``: the classes of its foreground anchors (None: no
    box)."""
    conf = (prob.max(1).values >= CONFIDENT) | (rp.max(1).values >= CONFIDENT)
    ds = float((prob[conf] - rp[conf]).norm(dim=1).mean()) if conf.any() else 0.0
    ref_prob = (float(rp[fg].gather(1, fg_class[:, None]).mean()) if fg_class is not None
                else float(1 - rp.max()))
    return ds, int(rp.flatten().argmax()) % rp.shape[1], ref_prob


def image_scores(model, cls, deltas, anchors, targets, ref_cls=None) -> dict[str, list]:
    """The columns (module doc) of the images of one batch."""
    from torchvision.ops import boxes as box_ops, sigmoid_focal_loss

    cols: dict[str, list] = {k: [] for k in (
        "evs", "ds", "loss", "box_loss", "pred", "prob_label", "margin", "entropy", "max_prob",
        "ref_pred", "ref_prob_label", "num_boxes", "fg_anchors")}
    for i, target in enumerate(targets):
        logits, anc, gt = cls[i].float(), anchors[i], target["boxes"]
        prob = logits.sigmoid()
        if len(gt):
            matched = model.proposal_matcher(box_ops.box_iou(gt, anc))
        else:
            matched = torch.full((len(anc),), -1, dtype=torch.int64)
        fg = matched >= 0
        nfg = int(fg.sum())
        onehot = torch.zeros_like(prob)
        if nfg:
            fg_class = target["labels"][matched[fg]]
            onehot[fg, fg_class] = 1.0
        valid = matched != model.proposal_matcher.BETWEEN_THRESHOLDS
        focal = sigmoid_focal_loss(logits[valid], onehot[valid], reduction="sum") / max(1, nfg)
        if nfg:
            target_deltas = model.box_coder.encode_single(gt[matched[fg]], anc[fg])
            box = torch.nn.functional.l1_loss(deltas[i][fg].float(), target_deltas,
                                              reduction="sum") / max(1, nfg)
            p_fg = prob[fg]
            right = p_fg.gather(1, fg_class[:, None])[:, 0]
            others = p_fg.scatter(1, fg_class[:, None], -1.0).max(1).values
            evs = (p_fg - onehot[fg]).norm(dim=1).mean()
            prob_label, margin = right.mean(), (right - others).mean()
            entropy = _binary_entropy(p_fg).sum(1).mean()
        else:
            box = torch.zeros(())
            top = prob.max(1).values.topk(min(TOP_ANCHORS, len(prob))).indices
            evs = prob[top].norm(dim=1).mean()
            prob_label = 1 - prob.max()
            margin = prob_label - prob.max()
            entropy = _binary_entropy(prob[top]).sum(1).mean()
        flat = int(prob.flatten().argmax())
        cols["pred"].append(flat % prob.shape[1])
        cols["max_prob"].append(float(prob.max()))
        ref = (None, None, None) if ref_cls is None else _reference_columns(
            prob, ref_cls[i].float().sigmoid(), fg, fg_class if nfg else None)
        for k, v in zip(("ds", "ref_pred", "ref_prob_label"), ref):
            cols[k].append(v)
        cols["evs"].append(float(evs))
        cols["loss"].append(float(focal + box))
        cols["box_loss"].append(float(box))
        cols["prob_label"].append(float(prob_label))
        cols["margin"].append(float(margin))
        cols["entropy"].append(float(entropy))
        cols["num_boxes"].append(len(gt))
        cols["fg_anchors"].append(nfg)
    return cols


TYPES = {"evs": pa.float32(), "ds": pa.float32(), "loss": pa.float32(),
         "box_loss": pa.float32(), "pred": pa.int64(), "prob_label": pa.float32(),
         "margin": pa.float32(), "entropy": pa.float32(), "max_prob": pa.float32(),
         "ref_pred": pa.int64(), "ref_prob_label": pa.float32(), "num_boxes": pa.int32(),
         "fg_anchors": pa.int32()}


def _cache_bytes(cache: dict) -> int:
    return sum(v.numel() * 4 for v in cache.values())


def _batches(data, batch_size: int):
    from .data import batch_of

    for start in range(0, len(data), batch_size):
        rows = list(range(start, min(start + batch_size, len(data))))
        yield (rows, *batch_of(data, rows))


# what a reference cache may hold (its class logits, float32): the CPU set's 4,000 images
# take about 500 MB; COCO's would take terabytes, so its rounds run the reference again
REFERENCE_CACHE_BYTES = 2 << 30


@torch.no_grad()
def score_detections(student, data, reference=None, *, epoch: int = 0, batch_size: int = 16,
                     device=None, metadata: dict | None = None,
                     reference_cache: dict | None = None) -> pa.Table:
    """Score every image of ``data`` (a ``DetectionData``) with a RetinaNet ``student``
    (and DS against ``reference``): one row per image on the score-table contract plus
    ``box_loss``, ``num_boxes`` and ``fg_anchors``, in row order (module doc).

    ``reference_cache``: a dict kept between the rounds of one run (same data, same batch
    size): the reference's class logits of each batch are kept there, up to
    ``REFERENCE_CACHE_BYTES``, so that later rounds skip its forward pass. The reference is
    fixed, so a cached round's table is the same as a recomputed one."""
    from ...common.checks import non_negative_int, positive_int
    from ...common.tables import make_metadata, with_metadata

    non_negative_int("epoch", epoch)
    positive_int("batch_size", batch_size)
    device = resolve_device(device)
    models = [m for m in (student, reference) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval().to(device)
    cols: dict[str, list] = {}
    try:
        for rows, images, targets in _batches(data, batch_size):
            images = [x.to(device) for x in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            cls, deltas, anchors, resized = head_outputs(student, images, targets)
            ref_cls = None
            if reference is not None:
                key = (rows[0], len(rows), batch_size)
                ref_cls = None if reference_cache is None else reference_cache.get(key)
                if ref_cls is None:
                    ref_cls = head_outputs(reference, images, targets)[0]
                    if reference_cache is not None and _cache_bytes(reference_cache) + \
                            ref_cls.numel() * 4 <= REFERENCE_CACHE_BYTES:
                        reference_cache[key] = ref_cls.float().cpu()
                ref_cls = ref_cls.to(device)
            for k, v in image_scores(student, cls, deltas, anchors, resized, ref_cls).items():
                cols.setdefault(k, []).extend(v)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    n = len(data)
    table = pa.table({
        "sample_id": pa.array(data.sample_ids, pa.int64()),
        "label": pa.array(data.image_labels, pa.int64()),
        "epoch": pa.array(np.full(n, epoch, np.int32)),
        **{k: pa.array(cols[k], TYPES[k]) for k in TYPES}})
    return with_metadata(table, make_metadata(
        kind="scores", task="detection", fingerprint=data.fingerprint, epoch=epoch,
        num_classes=data.num_classes, class_names=list(data.class_names),
        **(metadata or {})))
