"""Model registry: architectures by name, built with ``create_model(name, num_classes=...)``.

Adding an architecture is one decorated function in this file (or anywhere that imports
``register_model``)::

    @register_model("my_net")
    def my_net(num_classes: int, in_channels: int = 3) -> nn.Module: ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ...common.checks import is_int, positive_int
from ...common.registry import Registry
from ...scoring.measures import last_linear  # noqa: F401  (the classifier layer; re-exported)

__all__ = ["MODELS", "register_model", "create_model", "list_models", "last_linear"]

MODELS: Registry = Registry(
    "model", unknown="unknown model {name!r}; registered models: {known}")


def register_model(name: str) -> Callable:
    """Decorator that registers an architecture: ``fn(num_classes, in_channels, **kw)``.

    Args:
        name: the name ``create_model`` and the ``model`` recipe key take.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: (when the decorator is applied) ``name`` is already registered.
    """
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of the registered architectures.

    Returns:
        The names, sorted.
    """
    return MODELS.names()


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the registered architecture ``name`` with fresh (untrained) weights.

    Args:
        name: a registered architecture (``list_models``).
        num_classes: outputs of the classifier, at least 2.
        in_channels: image channels.
        **kwargs: passed to the architecture's constructor.

    Returns:
        The model (float, train mode).

    Raises:
        ValueError: an unknown name or a bad ``num_classes`` / ``in_channels``.
    """
    build = MODELS.lookup(name)
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    positive_int("in_channels", in_channels)
    return build(num_classes=num_classes, in_channels=in_channels, **kwargs)


# ---------------------------------------------------------------- CIFAR ResNet-20/32/56
class _PadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "pad":
                self.shortcut = _PadShortcut(planes - in_planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: a 3x3 stem, no max-pool, then stages of basic blocks."""

    def __init__(self, blocks: list[int], widths: list[int], num_classes: int,
                 in_channels: int = 3, shortcut: str = "pad") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(_BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def _cifar_resnet(depth: int):
    n = (depth - 2) // 6

    def build(num_classes: int, in_channels: int = 3) -> nn.Module:
        return CifarResNet([n, n, n], [16, 32, 64], num_classes, in_channels, shortcut="pad")

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, option A shortcuts)."
    return build


for _depth in (20, 32, 56):
    register_model(f"resnet{_depth}")(_cifar_resnet(_depth))


@register_model("resnet18_cifar")
def resnet18_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 1x1 conv projection shortcuts."""
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels,
                       shortcut="conv")


# ---------------------------------------------------------------- MobileNetV2
_MBV2_CIFAR_SETTING = [
    # expansion t, channels c, repeats n, first stride s (stride 1 where ImageNet has 2)
    [1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
    [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1],
]


def _set_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """MobileNetV2 for 32x32 inputs (stride-1 stem and second stage), width multiplier ``width``."""
    if not (isinstance(width, (int, float)) and 0 < width <= 4):
        raise ValueError(f"width must be a number in (0, 4]; got {width!r}")
    model = torchvision.models.MobileNetV2(num_classes=num_classes, width_mult=float(width),
                                           inverted_residual_setting=_MBV2_CIFAR_SETTING)
    stem = model.features[0][0]
    stem.stride = (1, 1)
    model.features[0][0] = _set_in_channels(stem, in_channels)
    return model


def _imagenet_resnet(depth: int):
    def build(num_classes: int, in_channels: int = 3, weights=None) -> nn.Module:
        model = getattr(torchvision.models, f"resnet{depth}")(weights=weights,
                                                              num_classes=num_classes)
        model.conv1 = _set_in_channels(model.conv1, in_channels)
        return model

    build.__doc__ = (f"torchvision's ImageNet ResNet-{depth} (7x7 stem and max-pool, for "
                     "224x224 inputs; ``weights`` as torchvision takes them, which downloads).")
    return build


for _depth in (18, 34, 50, 101):
    register_model(f"resnet{_depth}")(_imagenet_resnet(_depth))


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int = 3, weights=None,
                 width: float = 1.0) -> nn.Module:
    """torchvision's ImageNet MobileNetV2 (``weights`` as torchvision takes them; downloads)."""
    model = torchvision.models.mobilenet_v2(weights=weights, num_classes=num_classes,
                                            width_mult=float(width))
    model.features[0][0] = _set_in_channels(model.features[0][0], in_channels)
    return model


# ---------------------------------------------------------------- small CNN for the demo
class SmallCNN(nn.Module):
    """Two conv blocks and a linear classifier; fast enough for 8x8 digits on a CPU."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, width: int = 32) -> nn.Module:
    return SmallCNN(num_classes, in_channels, width)
