"""Training pieces: one epoch over a subset (with optional distillation), evaluation.

Readable loops over library parts; the run-level trainer composes them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data import EvalTransform, ImageData, TrainTransform, iter_batches, load_batches
from ...common.progress import progress

__all__ = ["soft_cross_entropy", "train_epoch", "evaluate", "predict_logits"]

log = logging.getLogger(__name__)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Per-sample cross-entropy of the student against the teacher's softened softmax.

    Args:
        student_logits: ``(batch, classes)``.
        teacher_logits: ``(batch, classes)``.
        temperature: the softening temperature T (the loss is scaled by T**2).

    Returns:
        ``(batch,)`` losses, in float32.
    """
    t = temperature
    target = F.softmax(teacher_logits.float() / t, dim=1)
    return -(target * F.log_softmax(student_logits.float() / t, dim=1)).sum(dim=1) * (t * t)


def train_epoch(
    model: nn.Module,
    data: ImageData,
    transform: TrainTransform,
    optimizer: torch.optim.Optimizer,
    *,
    positions: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    teacher: nn.Module | None = None,
    label_weight: float = 0.0,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    scheduler=None,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    label_smoothing: float = 0.0,
    plan: list[tuple[np.ndarray, np.ndarray]] | None = None,
    on_batch=None,
) -> float:
    """One pass over ``positions`` (default: every row) in random order; returns mean loss.

    Without a teacher the loss is cross-entropy; with one it is the soft cross-entropy to
    the teacher (T = 1) plus ``label_weight`` times the cross-entropy. ``weights`` (one per
    position) scale each sample's loss. ``scheduler.step()`` runs after every optimizer step.
    ``on_batch(positions, logits, teacher_logits, labels)`` sees every batch's outputs
    (teacher_logits None without a teacher): what ``StepScores.record`` takes.

    Args:
        model: the model being trained (put in train mode).
        data: the training split.
        transform: its ``TrainTransform`` (augmentation).
        optimizer: the optimizer.
        positions: the rows to train on (default: all).
        weights: one loss weight per position.
        teacher: the model to distil from, or None.
        label_weight: weight of the label cross-entropy added to distillation.
        batch_size: batch size.
        generator: seeds the order and the augmentation.
        scheduler: stepped after every optimizer step, or None.
        device: where the model runs.
        channels_last: feed channels-last batches.
        label_smoothing: of the cross-entropy without a teacher.
        plan: explicit batches ``[(positions, weights), ...]`` (``rank_plan``) instead
            of ``positions``.
        on_batch: called with every batch's outputs.

    Returns:
        The mean training loss over the epoch's samples.
    """
    positions = np.arange(len(data)) if positions is None else np.asarray(positions)
    w_by_pos = None
    if weights is not None:
        w_by_pos = torch.zeros(len(data))
        w_by_pos[torch.as_tensor(positions)] = torch.as_tensor(weights, dtype=torch.float32)
    model.train()
    if teacher is not None:
        teacher.eval()
    total, count = 0.0, 0
    if plan is None:
        batches = ((pos, images, labels, None) for pos, images, labels in
                   iter_batches(data, batch_size, positions, shuffle=True, generator=generator,
                                view="train"))
        n_total = len(positions)
    else:  # an explicit batch plan: (positions, extra per-sample weights) in order
        loaded = load_batches(data, [p for p, _ in plan], view="train", generator=generator)
        batches = ((pos, images, labels, torch.as_tensor(w, dtype=torch.float32))
                   for (pos, images, labels), (_, w) in zip(loaded, plan))
        n_total = sum(len(p) for p, _ in plan)
    with progress(total=n_total, desc="train", unit="img") as bar:
        for pos, images, labels, extra_w in batches:
            x = transform(images.to(device, non_blocking=True), generator=generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels.to(device, non_blocking=True)
            logits, t_logits = model(x), None
            if teacher is None:
                per_sample = F.cross_entropy(logits, y, reduction="none",
                                             label_smoothing=label_smoothing)
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
                per_sample = soft_cross_entropy(logits, t_logits)
                if label_weight:
                    per_sample = per_sample + label_weight * F.cross_entropy(logits, y,
                                                                             reduction="none")
            if on_batch is not None:
                on_batch(pos, logits, t_logits, y)
            if w_by_pos is not None:
                per_sample = per_sample * w_by_pos[pos].to(per_sample.device)
            if extra_w is not None:
                per_sample = per_sample * extra_w.to(per_sample.device)
            loss = per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total = total + loss.detach() * len(labels)  # no per-step device sync
            count += len(labels)
            bar.update(len(labels))
    return float(total) / max(count, 1)


@torch.inference_mode()
def predict_logits(model: nn.Module, data: ImageData, transform: EvalTransform, *,
                   batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """The logits of every row of ``data`` (eval mode; the model's mode is restored).

    Args:
        model: the model.
        data: the dataset.
        transform: its ``EvalTransform``.
        batch_size: samples per forward pass.
        device: where the model runs.

    Returns:
        ``(len(data), classes)`` float32 logits on CPU, in row order.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = [model(transform(images.to(device, non_blocking=True))).float().cpu()
                   for _, images, _ in iter_batches(data, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, data: ImageData, transform: EvalTransform, *,
             batch_size: int = 512, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (percent) of ``model`` on ``data`` with the eval transform.

    Args:
        model: the model.
        data: the dataset (its labels are the truth).
        transform: its ``EvalTransform``.
        batch_size: samples per forward pass.
        device: where the model runs.

    Returns:
        Top-1 accuracy in percent.
    """
    logits = predict_logits(model, data, transform, batch_size=batch_size, device=device)
    return 100.0 * float((logits.argmax(1) == data.labels).float().mean())
