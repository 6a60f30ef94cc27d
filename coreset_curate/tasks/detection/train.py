"""Training a RetinaNet: its own losses, distillation from a full-precision teacher's head
outputs, one epoch over a subset. The run-level trainer (``training.run``) uses these when
the recipe's ``model`` is a registered detector.

Per image, with the anchors matched to the ground truth by the model's own matcher (IoU
>= 0.5 foreground, < 0.4 background, between: ignored) and ``F`` the number of foreground
anchors (at least 1):

* the **ground-truth loss** is RetinaNet's: the sigmoid focal loss (alpha 0.25, gamma 2)
  summed over the anchors that are not ignored, plus the L1 loss of the box deltas on the
  foreground anchors, both divided by ``F``;
* the **distillation loss** asks the student's head for the teacher's outputs: for every
  anchor and class, the binary KL divergence of the student's sigmoid score ``p`` from the
  teacher's ``t``, weighted by ``(t - p)^2`` as the quality focal loss weights its soft
  targets (Li et al. 2020, Generalized Focal Loss), summed over every anchor; plus the L1
  distance between the two models' box deltas on the foreground anchors; both divided by
  ``F``. It is 0, with zero gradient, where the student gives the teacher's outputs (a
  focal loss against soft targets is not: its minimum lies off the target), and the
  weight keeps the many background anchors the two already agree on from drowning the
  rest, as the focal loss does for the ground truth. This carries the classifiers'
  distillation (the teacher's soft targets) to a detector's dense outputs; the ACS paper
  does not say how it distils RetinaNet, so the definition is the project's own.

The loss of an image is the distillation loss plus ``label_weight`` times the ground-truth
loss (the ground-truth loss alone without a teacher), times the image's weight from the
index (soft selection); the batch loss is the mean over its images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...common.progress import progress
from .data import batch_of

__all__ = ["DetectorLoss", "match_anchors", "soft_sigmoid_kd", "train_detection_epoch",
           "batch_of"]


def match_anchors(model, targets: list[dict], anchors: list[torch.Tensor]) -> list[torch.Tensor]:
    """For every anchor of every image, the index of its ground-truth box, or -1
    (background) / -2 (ignored), by the model's own matcher."""
    from torchvision.ops import boxes as box_ops

    out = []
    for anc, target in zip(anchors, targets):
        if target["boxes"].numel() == 0:
            out.append(torch.full((len(anc),), -1, dtype=torch.int64, device=anc.device))
        else:
            out.append(model.proposal_matcher(box_ops.box_iou(target["boxes"], anc)))
    return out


def _focal(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, targets, reduction="sum")


def soft_sigmoid_kd(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Sum over the elements of ``(t - p)^2 KL(t || p)`` for Bernoulli scores ``p =
    sigmoid(logits)``, ``t = sigmoid(teacher_logits)`` (module doc)."""
    t_logits = teacher_logits.float()
    t = t_logits.sigmoid()
    # KL(t || p) = BCE(p; t) - H(t), and H(t) = BCE(t; t): both stable from logits
    kl = (F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
          - F.binary_cross_entropy_with_logits(t_logits, t, reduction="none")).clamp_min(0)
    return ((t - logits.float().sigmoid()) ** 2 * kl).sum()


class DetectorLoss(nn.Module):
    """A RetinaNet ``model`` and its per-image training loss (module doc).

    ``forward(images, targets, weights=None, teacher=None)`` returns the weighted mean loss
    of the batch; ``last`` holds the batch's mean ground-truth and distillation terms. The
    teacher is an argument, not a submodule, so that DistributedDataParallel sees the
    student's parameters only."""

    def __init__(self, model: nn.Module, label_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.label_weight = float(label_weight)
        self.last: dict[str, float] = {}

    def _outputs(self, model, batch):
        features = list(model.backbone(batch.tensors).values())
        return model.head(features), features

    def forward(self, images: list[torch.Tensor], targets: list[dict], weights=None,
                teacher: nn.Module | None = None) -> torch.Tensor:
        m = self.model
        batch, resized = m.transform(images, targets)
        out, features = self._outputs(m, batch)
        anchors = m.anchor_generator(batch, features)
        matched = match_anchors(m, resized, anchors)
        t_out = None
        if teacher is not None:
            with torch.no_grad():
                t_out = self._outputs(teacher, batch)[0]
            if t_out["cls_logits"].shape != out["cls_logits"].shape:
                raise ValueError("the teacher's head outputs do not line up with the student's "
                                 f"({tuple(t_out['cls_logits'].shape)} against "
                                 f"{tuple(out['cls_logits'].shape)}): distillation needs the "
                                 "same anchors, input size and classes")
        losses, gt_terms, kd_terms = [], [], []
        for i, target in enumerate(resized):
            logits, deltas, anc, idx = (out["cls_logits"][i], out["bbox_regression"][i],
                                        anchors[i], matched[i])
            fg = idx >= 0
            n_fg = max(1, int(fg.sum()))
            gt = logits.new_zeros(())
            if teacher is None or self.label_weight:
                onehot = torch.zeros_like(logits)
                onehot[fg, target["labels"][idx[fg]]] = 1.0
                valid = idx != m.proposal_matcher.BETWEEN_THRESHOLDS
                gt = _focal(logits[valid], onehot[valid]) / n_fg
                if fg.any():
                    want = m.box_coder.encode_single(target["boxes"][idx[fg]], anc[fg])
                    gt = gt + F.l1_loss(deltas[fg], want, reduction="sum") / n_fg
            loss = gt if teacher is None else self.label_weight * gt
            if teacher is not None:
                kd = soft_sigmoid_kd(logits, t_out["cls_logits"][i]) / n_fg
                if fg.any():
                    kd = kd + F.l1_loss(deltas[fg], t_out["bbox_regression"][i][fg],
                                        reduction="sum") / n_fg
                loss = loss + kd
                kd_terms.append(kd.detach())
            gt_terms.append(gt.detach())
            losses.append(loss)
        per_image = torch.stack(losses)
        if weights is not None:
            per_image = per_image * weights.to(per_image.device)
        self.last = {"gt": float(torch.stack(gt_terms).mean()),
                     **({"kd": float(torch.stack(kd_terms).mean())} if kd_terms else {})}
        return per_image.mean()


def train_detection_epoch(loss_model: nn.Module, data, optimizer: torch.optim.Optimizer, *,
                          positions: np.ndarray | None = None,
                          weights: np.ndarray | None = None, teacher: nn.Module | None = None,
                          batch_size: int = 8, generator: torch.Generator | None = None,
                          scheduler=None, device="cpu",
                          plan: list[tuple[np.ndarray, np.ndarray]] | None = None,
                          flip: bool = True) -> float:
    """One pass over ``positions`` (default: every image) in random order, or over the
    batches of ``plan`` (distributed: this rank's positions and extra weights), through
    ``loss_model`` (a ``DetectorLoss``, possibly inside DistributedDataParallel); returns
    the mean loss. ``weights`` (one per position) scale each image's loss."""
    positions = np.arange(len(data)) if positions is None else np.asarray(positions)
    w_by_pos = None
    if weights is not None:
        w_by_pos = torch.zeros(len(data))
        w_by_pos[torch.as_tensor(positions)] = torch.as_tensor(weights, dtype=torch.float32)
    if plan is None:
        order = positions[torch.randperm(len(positions), generator=generator).numpy()]
        plan = [(order[s:s + batch_size], None) for s in range(0, len(order), batch_size)]
    loss_model.train()
    if teacher is not None:
        teacher.eval()
    total, count = 0.0, 0
    with progress(total=sum(len(p) for p, _ in plan), desc="train", unit="img") as bar:
        for pos, extra in plan:
            images, targets = batch_of(data, pos, generator=generator, flip=flip, device=device)
            w = None if w_by_pos is None else w_by_pos[torch.as_tensor(pos)]
            if extra is not None:
                extra = torch.as_tensor(extra, dtype=torch.float32)
                w = extra if w is None else w * extra
            loss = loss_model(images, targets, w, teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(pos)
            count += len(pos)
            bar.update(len(pos))
    return total / max(count, 1)
