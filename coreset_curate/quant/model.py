"""Model-level LSQ: ``quantize_model`` swaps a model's layers for their quantized twins,
``calibrate_`` sets the step sizes from data, ``is_quantized`` / ``quant_config`` /
``config_dict`` read back what was applied."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict

import torch
from torch import nn

from ..common.checks import InputTypeError
from .lsq import FLOAT_BITS, LsqQuantizer, QuantConfig, QuantConv2d, QuantLinear, _QuantMixin

__all__ = ["quantize_model", "calibrate_", "is_quantized", "quant_config", "config_dict"]

log = logging.getLogger(__name__)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds any LSQ quantizer.

    Args:
        model: any module.

    Returns:
        True when ``quantize_model`` (or a quantized layer) is in it.
    """
    return any(isinstance(m, LsqQuantizer) for m in model.modules())


def quant_config(model: nn.Module) -> QuantConfig | None:
    """The ``QuantConfig`` that ``quantize_model`` applied to ``model``.

    Args:
        model: any module.

    Returns:
        The config, or None for a model ``quantize_model`` did not quantize.
    """
    return getattr(model, "_coreset_quant_config", None)


def quantize_model(
    model: nn.Module,
    w_bits: int | QuantConfig = 4,
    a_bits: int = 4,
    *,
    per_channel: bool = True,
    first_last: str = "int8",
    init: str = "mse",
    calibration: Iterable | None = None,
) -> nn.Module:
    """Fake-quantize every Conv2d and Linear of ``model`` in place and return it.

    ``calibration``: optional iterable of input batches (tensors, or tuples whose first
    item is the input) used to initialise the activation step sizes right away; without
    it, call ``calibrate_`` before the first forward (or load a quantized checkpoint).

    The settings may also come as one ``QuantConfig``: ``quantize_model(model,
    QuantConfig(w_bits=2, a_bits=2))`` (then the other setting arguments are not read).

    Args:
        model: the float model.
        w_bits: weight bits (2..8, 32 for float), or a ``QuantConfig``.
        a_bits: activation bits (2..8, 32 for float).
        per_channel: as in ``QuantConfig``.
        first_last: as in ``QuantConfig``.
        init: as in ``QuantConfig``.
        calibration: input batches to calibrate with right away (``calibrate_``).

    Returns:
        ``model`` itself, its layers replaced by ``QuantConv2d`` / ``QuantLinear``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a setting is out of range, the model is already quantized, or it has
            no Conv2d or Linear layer.
    """
    config = (w_bits if isinstance(w_bits, QuantConfig)
              else QuantConfig(w_bits, a_bits, per_channel, first_last, init))
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if is_quantized(model):
        raise ValueError("model is already quantized")
    layers = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if not layers:
        raise ValueError("model has no nn.Conv2d or nn.Linear layer to quantize")
    first_conv = next((n for n, m in layers if isinstance(m, nn.Conv2d)), None)
    # the output layers: a classifier's last linear, or those a model names (a RetinaNet's
    # class and box convolutions)
    outputs = set(getattr(model, "output_layers", ()) or
                  [next((n for n, m in reversed(layers) if isinstance(m, nn.Linear)), None)])
    for name, module in layers:
        wb, ab = config.w_bits, config.a_bits
        if name == first_conv or name in outputs:
            if config.first_last == "float":
                continue
            if config.first_last == "int8":
                wb = wb if wb == FLOAT_BITS else max(wb, 8)
                ab = ab if ab == FLOAT_BITS else max(ab, 8)
        if wb == FLOAT_BITS and ab == FLOAT_BITS:
            continue
        cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        qmodule = cls.from_float(module, wb, ab, config.per_channel, config.init)
        # the new step sizes and buffers live where the layer's weight lives
        _set_submodule(model, name, qmodule.to(module.weight.device))
    model._coreset_quant_config = config
    if calibration is not None:
        calibrate_(model, calibration)
    return model


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Iterable, max_batches: int | None = 8) -> nn.Module:
    """Initialise every LSQ step of ``model`` from data, in place.

    Weight steps are set from the current weights; activation steps (and signs) from the
    activations that reach each layer on ``batches``, with weights already quantized and
    activations passed through unquantized, in eval mode (so batch-norm uses its running
    statistics).

    Args:
        model: a model ``quantize_model`` quantized.
        batches: input batches (tensors, or tuples whose first item is the input).
        max_batches: the most batches used (None: all).

    Returns:
        ``model``, calibrated (its train/eval mode restored).

    Raises:
        ValueError: the model has no LSQ quantizer, or ``batches`` is empty.
    """
    layers = [m for m in model.modules() if isinstance(m, _QuantMixin)]
    if not layers:
        raise ValueError("model has no LSQ quantizer: call quantize_model first")
    for layer in layers:
        if layer.w_quant is not None:
            layer.w_quant.init_from(layer.weight)
    quantizers = [layer.a_quant for layer in layers if layer.a_quant is not None]
    was_training = model.training
    model.eval()
    for q in quantizers:
        q.start_observing()
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            seen += 1
            if max_batches is not None and seen >= max_batches:
                break
        if seen == 0:
            raise ValueError("calibration got no batch of data")
        for q in quantizers:
            q.finish_observing()
    finally:
        for q in quantizers:
            q._observing, q._observed = False, []
        model.train(was_training)
    log.debug("calibrated %d quantizers on %d batches", len(quantizers), seen)
    return model


def config_dict(model: nn.Module) -> dict:
    cfg = quant_config(model)
    return asdict(cfg) if cfg is not None else {"w_bits": FLOAT_BITS, "a_bits": FLOAT_BITS}
