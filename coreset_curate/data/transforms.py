"""Batched transforms on uint8 image tensors: the deterministic eval view and the
augmented train view (random crop with zero padding, flip)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..common.checks import InputTypeError

__all__ = ["EvalTransform", "TrainTransform", "default_transforms"]


@dataclass(frozen=True)
class EvalTransform:
    """uint8 (N, C, H, W) -> float, scaled to [0, 1] and normalised per channel.

    Deterministic: the same batch always gives the same tensor. Calling it on a batch
    that is not uint8 raises ``TypeError``.

    Attributes:
        mean: one per channel, on the [0, 1] scale.
        std: one per channel.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise InputTypeError(f"transforms take uint8 image batches; got {x.dtype}")
        return self.normalize(x)

    def to_dict(self) -> dict:
        return {"kind": type(self).__name__, **{k: getattr(self, k) for k in self.__dataclass_fields__}}


@dataclass(frozen=True)
class TrainTransform(EvalTransform):
    """Random crop with zero padding and (optionally) horizontal flip on a whole batch,
    then the same normalisation as ``EvalTransform``.

    Called as ``transform(batch, generator=None)``; the generator seeds the crops and
    flips.

    Attributes:
        mean: one per channel, on the [0, 1] scale.
        std: one per channel.
        padding: zero padding before the random crop back to the image size.
        flip: random horizontal flips.
    """

    padding: int = 4
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise InputTypeError(f"transforms take uint8 image batches; got {x.dtype}")
        n, c, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return self.normalize(x)


def default_transforms(train, *, flip: bool | None = None, padding: int | None = None,
                       mean=None, std=None) -> tuple[TrainTransform, EvalTransform]:
    """Train and eval transforms normalised with the statistics of ``train`` (or the given
    ``mean`` and ``std``, one per channel on the [0, 1] scale, for example the ones a
    pretrained model was trained with).

    Padding defaults to 1/8 of the image side (4 for 32x32), and to none for a streamed
    dataset, which crops while it decodes; flipping defaults to on, except for digit
    datasets where a mirrored digit is another symbol.

    Args:
        train: the training split (an ``ImageData``).
        flip: random horizontal flips (default: as above).
        padding: padding of the random crop (default: as above).
        mean: fixed normalisation mean, one per channel.
        std: fixed normalisation standard deviation, one per channel.

    Returns:
        ``(TrainTransform, EvalTransform)``.

    Raises:
        ValueError: only one of ``mean`` and ``std`` is given, they do not have one
            number per channel, or a ``std`` is not positive.
    """
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is None:
        mean, std = train.channel_stats()
    else:
        channels = train.image_shape[0]
        for name, v in (("mean", mean), ("std", std)):
            if (not isinstance(v, (list, tuple)) or len(v) != channels or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise ValueError(f"{name} must be {channels} numbers (one per channel); "
                                 f"got {v!r}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive; got {std!r}")
        mean, std = tuple(float(x) for x in mean), tuple(float(x) for x in std)
    if padding is None:
        padding = 0 if getattr(train, "crops_on_decode", False) \
            else max(1, train.image_shape[-1] // 8)
    if flip is None:
        flip = train.name not in ("digits", "torchvision:MNIST")
    return TrainTransform(mean, std, padding=padding, flip=flip), EvalTransform(mean, std)


