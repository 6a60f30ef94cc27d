"""Learning rate over training progress, and the optimizer's parameter groups."""

from __future__ import annotations

import math

import torch

from ..quant import LsqQuantizer

__all__ = ["ProgressLR", "build_optimizer"]


class ProgressLR:
    """Learning rate as a function of training progress (epochs done, fractional), so
    that the schedule spans the run's real optimizer steps whatever the subset size.

    Args:
        optimizer: its groups' ``lr`` are the base rates (kept as ``base_lr``).
        config: the ``TrainConfig`` (``epochs``, ``warmup_epochs``, ``lr_schedule``).
    """

    def __init__(self, optimizer, config) -> None:
        self.optimizer, self.config = optimizer, config
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.epoch, self.batches, self.i = 0, 1, 0

    def begin_epoch(self, epoch: int, batches: int) -> None:
        """Start ``epoch``, which will run ``batches`` optimizer steps."""
        self.epoch, self.batches, self.i = epoch, max(batches, 1), 0
        self._apply()

    def factor(self, progress: float) -> float:
        """The multiplier of the base rates after ``progress`` epochs (fractional)."""
        c = self.config
        if c.warmup_epochs and progress < c.warmup_epochs:
            return (progress + 1e-3) / c.warmup_epochs
        if c.lr_schedule == "constant":
            return 1.0
        span = max(c.epochs - c.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min((progress - c.warmup_epochs) / span, 1.0)))

    def _apply(self) -> None:
        f = self.factor(self.epoch + self.i / self.batches)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * f

    def step(self) -> None:
        """After one optimizer step."""
        self.i += 1
        self._apply()

    @property
    def lr(self) -> float:
        """The first group's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]



def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """SGD or Adam with the run's parameter groups.

    Weights decay; batch-norm weights, biases and LSQ step sizes do not; step sizes get
    ``step_lr`` (8-bit ones ``step_lr_8bit`` when set).

    Args:
        model: the model to train.
        config: the ``TrainConfig``.

    Returns:
        The optimizer.
    """
    eight_bit = {id(m.step) for m in model.modules()
                 if isinstance(m, LsqQuantizer) and m.bits == 8}
    steps, steps8, decay, no_decay = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".step"):
            (steps8 if id(p) in eight_bit and config.step_lr_8bit is not None
             else steps).append(p)
        elif p.dim() <= 1:
            no_decay.append(p)  # batch-norm weights and biases
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if steps:
        groups.append({"params": steps, "weight_decay": 0.0,
                       "lr": config.step_lr if config.step_lr is not None else config.lr})
    if steps8:
        groups.append({"params": steps8, "weight_decay": 0.0, "lr": config.step_lr_8bit})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.Adam(groups, lr=config.lr)


