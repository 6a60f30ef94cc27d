"""LSQ fake quantization (Esser et al., "Learned Step Size Quantization", ICLR 2020).

``lsq`` holds the quantizer and the quantized Conv2d/Linear twins, ``model`` the
model-level steps: ``quantize_model`` (swap the layers in place), ``calibrate_`` (step
sizes from data), ``is_quantized``, ``quant_config`` and ``config_dict``.
"""

from .lsq import FLOAT_BITS, LsqQuantizer, QuantConfig, QuantConv2d, QuantLinear
from .model import calibrate_, config_dict, is_quantized, quant_config, quantize_model

__all__ = ["QuantConfig", "LsqQuantizer", "QuantConv2d", "QuantLinear", "quantize_model",
           "calibrate_", "is_quantized", "quant_config", "config_dict", "FLOAT_BITS"]
