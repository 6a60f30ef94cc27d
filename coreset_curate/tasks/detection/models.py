"""RetinaNet detectors from torchvision, sized for the data here and ready for LSQ.

``create_detector("retinanet_resnet18_fpn", num_classes=10)`` (small inputs, for the CPU
set made by ``make_coco``) and ``"retinanet_resnet50_fpn"`` (the paper's, COCO-sized
inputs), registered apart from the classifiers (``DETECTORS``, ``register_detector``):
torchvision's ``RetinaNet`` on a ResNet FPN backbone (P3-P7, batch-norm that trains, every
layer trainable), its own focal and box losses in train mode and post-processed detections
in eval mode. Images go in as float tensors in [0, 1]; the model normalises and resizes
them itself (``min_size``/``max_size``: 128/128 for the small set, COCO's 800/1333 for
ResNet-50).

The head's convolutions are followed by group norm (``head_norm="group"``, the default;
torchvision's RetinaNet v2 head) rather than the published head's bare convolutions
(``head_norm=None``). The published head starts its convolutions at a standard deviation of
0.01, which shrinks the signal at each of its four layers by about ``0.01 *
sqrt(9 * channels)``: 0.48 at 256 channels but 0.24 at the 64 a CPU detector uses, where
after 12 epochs on the CIFAR-10 detection set its class scores still did not depend on
the image (boxes found, the same scores for every class: AP50 0.11); group norm keeps the
signal at every width.

``output_layers`` names the head's two output convolutions (class logits and box
deltas): ``quantize_model`` keeps them at 8 bits with ``first_last="int8"``, as it keeps a
classifier's last linear layer, beside the backbone's first convolution. Every other
convolution of backbone, FPN and heads is quantized at the model's bit widths.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial

from torch import nn

from ...common.checks import is_int
from ...common.registry import Registry

__all__ = ["DETECTORS", "register_detector", "create_detector", "list_detectors", "retinanet"]

DETECTORS: Registry = Registry("detector")


def register_detector(name: str) -> Callable:
    return DETECTORS.register(name)


def list_detectors() -> list[str]:
    return DETECTORS.names()


def create_detector(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the registered detector ``name`` with untrained weights."""
    build = DETECTORS.lookup(name)
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    try:
        return build(num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        options = sorted(set(inspect.signature(retinanet).parameters) - {"num_classes",
                                                                         "backbone"})
        raise ValueError(f"detector {name!r}: {err} (model_kwargs; RetinaNet's options: "
                         f"{options})") from err

OUTPUT_LAYERS = ("head.classification_head.cls_logits", "head.regression_head.bbox_reg")


def retinanet(num_classes: int, *, backbone: str = "resnet18", min_size: int = 128,
              max_size: int = 128,
              anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256),
              fpn_channels: int = 256, score_thresh: float = 0.05,
              detections_per_img: int = 100, backbone_weights: str | None = None,
              head_norm: str | None = "group") -> nn.Module:
    """A RetinaNet with untrained weights (see module doc). ``anchor_sizes``: the base
    anchor side of P3..P7 (three scales and three aspect ratios each); ``fpn_channels``:
    the width of the pyramid and of the head's convolutions (256 as published; the head
    runs on every pyramid level, so narrowing it is what makes a CPU detector fast);
    ``backbone_weights``: pretrained weights for the ResNet body, torchvision's name of
    them (``"DEFAULT"``, ``"IMAGENET1K_V1"``; downloaded by torchvision on first use: the
    usual start of a COCO detector) or a ``.pt`` checkpoint of this toolkit's classifier
    of the same ResNet (``model: resnet18``; its ``fc`` layer is left out); ``head_norm``:
    ``"group"`` (group norm after each head convolution: up to 32 groups, of two channels
    or more) or None (the published head: module doc)."""
    import torchvision
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if backbone not in ("resnet18", "resnet34", "resnet50"):
        raise ValueError(f"backbone must be resnet18, resnet34 or resnet50; got {backbone!r}")
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size for each of P3..P7; got {anchor_sizes}")
    if not is_int(fpn_channels) or fpn_channels < 8:
        raise ValueError(f"fpn_channels must be an integer of at least 8; got {fpn_channels!r}")
    if head_norm not in ("group", None):
        raise ValueError(f"head_norm must be 'group' or null; got {head_norm!r}")
    from_file = backbone_weights is not None and str(backbone_weights).endswith(".pt")
    if backbone_weights is not None and not from_file:
        names = list(torchvision.models.get_model_weights(backbone).__members__)
        if backbone_weights not in names:
            raise ValueError(f"backbone_weights for {backbone} must be one of {names} or a "
                             f"checkpoint file (.pt); got {backbone_weights!r}")
    body = getattr(torchvision.models, backbone)(
        weights=None if from_file else backbone_weights, norm_layer=nn.BatchNorm2d)
    if from_file:
        _load_body(body, str(backbone_weights), backbone)
    # C3..C5 into the pyramid (P3..P5), P6 and P7 from P5, every layer trainable
    c5 = body.inplanes  # the channels of layer4's output
    fpn = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"},
                          [c5 // 4, c5 // 2, c5], fpn_channels,
                          extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
                          norm_layer=nn.BatchNorm2d)
    anchors = AnchorGenerator(
        tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in anchor_sizes),
        ((0.5, 1.0, 2.0),) * 5)
    head = None
    if head_norm == "group":
        # up to 32 groups of at least two channels: a group of one channel on P7's 1x1
        # map (small inputs) would have a single value to normalise
        groups = math.gcd(32, fpn_channels // 2)
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes,
                             norm_layer=partial(nn.GroupNorm, groups))
    model = RetinaNet(fpn, num_classes, min_size=min_size, max_size=max_size,
                      anchor_generator=anchors, head=head, score_thresh=score_thresh,
                      detections_per_img=detections_per_img)
    model.output_layers = OUTPUT_LAYERS
    return model


def _load_body(body: nn.Module, path: str, backbone: str) -> None:
    """The weights of a classifier checkpoint of the same torchvision ResNet (this
    toolkit's ``resnet18``... trained by ``coreset-curate train``), its classifier layer
    left out: the detector's pretrained backbone."""
    from ...common.checkpoint import load_state

    try:
        state = load_state(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"backbone_weights: no checkpoint {path}") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    problem = None
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of other shapes
        problem = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
    else:
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            problem = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    if problem:
        raise ValueError(f"backbone_weights {path} is not a checkpoint of torchvision's "
                         f"{backbone} ({problem}): train one with model: {backbone}")


@register_detector("retinanet_resnet18_fpn")
def _retinanet_r18(num_classes: int, **kwargs) -> nn.Module:
    return retinanet(num_classes, backbone="resnet18", **kwargs)


@register_detector("retinanet_resnet50_fpn")
def _retinanet_r50(num_classes: int, **kwargs) -> nn.Module:
    kwargs.setdefault("min_size", 800)
    kwargs.setdefault("max_size", 1333)
    kwargs.setdefault("anchor_sizes", (32, 64, 128, 256, 512))
    return retinanet(num_classes, backbone="resnet50", **kwargs)
