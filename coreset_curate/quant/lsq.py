"""LSQ fake quantization (Esser et al., "Learned Step Size Quantization", ICLR 2020).

``quantize_model(model, w_bits=4, a_bits=4)`` swaps every ``nn.Conv2d`` and ``nn.Linear``
of a CNN for a fake-quantized twin in place (the weights are shared, so the state-dict keys
of the float model stay valid) and returns the model.

Each wrapped layer quantizes its weight (signed, per output channel by default) and its
input activation (per tensor; unsigned when calibration saw no negative value, as after a
ReLU; signed otherwise). A quantizer computes ``round(clamp(v / s, Qn, Qp)) * s`` with a
straight-through estimator for the rounding and a learned step ``s`` whose gradient is
scaled by ``1 / sqrt(N * Qp)``, where N is the number of values that share the step (the
weights of one output channel, or the features of one sample).

Step sizes are initialised from data and never silently left unset: weight steps from the
weights when the layer is wrapped, activation steps by ``calibrate_`` (or by passing
``calibration=`` to ``quantize_model``). A forward through an uninitialised quantizer
raises an error that says what to call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuantConfig", "LsqQuantizer", "QuantConv2d", "QuantLinear", "FLOAT_BITS"]

FLOAT_BITS = 32
_VALID_BITS = (2, 3, 4, 5, 6, 7, 8, FLOAT_BITS)
_FIRST_LAST = ("int8", "float", "same")
_INITS = ("mse", "lsq")
_MAX_CALIB_VALUES = 1 << 18  # values kept per activation quantizer for the MSE search


def _check_bits(name: str, bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in _VALID_BITS:
        raise ValueError(f"{name} must be an integer in 2..8, or 32 for float; got {bits!r}")
    return bits


@dataclass(frozen=True)
class QuantConfig:
    """How ``quantize_model`` quantizes a model.

    Args:
        w_bits: weight bits, 2..8, or 32 to leave weights in float.
        a_bits: activation bits, 2..8, or 32 to leave activations in float.
        per_channel: one weight step per output channel (True) or one per layer (False).
        first_last: ``"int8"`` keeps the first conv and the last linear at 8 bits (the
            LSQ paper's choice), ``"float"`` leaves them in float, ``"same"`` quantizes
            them like every other layer. A model with an ``output_layers`` attribute
            (module names: a RetinaNet's class and box convolutions) has those as its last
            layers.
        init: step-size initialisation, ``"mse"`` (grid search for the step that
            minimises the quantization error; default) or ``"lsq"`` (the paper's
            2 * mean|v| / sqrt(Qp)).

    Raises:
        ValueError: a setting outside the values above.
    """

    w_bits: int = 4
    a_bits: int = 4
    per_channel: bool = True
    first_last: str = "int8"
    init: str = "mse"

    def __post_init__(self) -> None:
        _check_bits("w_bits", self.w_bits)
        _check_bits("a_bits", self.a_bits)
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be True or False; got {self.per_channel!r}")
        if self.first_last not in _FIRST_LAST:
            raise ValueError(f"first_last must be one of {_FIRST_LAST}; got {self.first_last!r}")
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}; got {self.init!r}")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass, gradient multiplied by ``scale`` in the backward pass."""
    y = x * scale
    return (x - y).detach() + y


def _bounds(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _mse_step(values: torch.Tensor, qn: int, qp: int, grid: int = 100) -> torch.Tensor:
    """Per-row step that minimises the squared quantization error of ``values`` (rows, n)."""
    v = values.float()
    max_abs = v.abs().amax(dim=1).clamp_min(1e-8)
    # largest magnitude representable is qp * s on the positive side, |qn| * s on the negative
    top = float(max(qp, -qn)) if qn < 0 else float(qp)
    best_err = torch.full_like(max_abs, float("inf"))
    best_step = max_abs / top
    for k in range(1, grid + 1):
        step = max_abs * (k / grid) / top
        q = torch.clamp(torch.round(v / step[:, None]), qn, qp) * step[:, None]
        err = (q - v).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_step = torch.where(better, step, best_step)
    return best_step


_MIN_STEP = 1e-8  # the smallest step a quantizer divides by (and the lsq init's floor)


def _lsq_step(values: torch.Tensor, qp: int) -> torch.Tensor:
    return (2.0 * values.float().abs().mean(dim=1) / math.sqrt(qp)).clamp_min(_MIN_STEP)


class LsqQuantizer(nn.Module):
    """Fake quantizer with a learned step size (LSQ).

    Args:
        bits: 2..8.
        num_channels: > 0 gives one step per slice along dim 0 (weights, per output
            channel); 0 gives one step for the whole tensor.
        signed: the integer grid's sign; None decides it from the data seen at
            calibration (activations).
        init: ``"mse"`` or ``"lsq"``, as in ``QuantConfig``.

    Raises:
        ValueError: ``bits`` outside 2..8 (32, float, takes no quantizer) or an unknown
            ``init``.
    """

    def __init__(
        self, bits: int, *, num_channels: int = 0, signed: bool | None = None, init: str = "mse"
    ) -> None:
        super().__init__()
        _check_bits("bits", bits)
        if bits == FLOAT_BITS:
            raise ValueError("a quantizer needs 2..8 bits; use no quantizer for float")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}; got {init!r}")
        self.bits = bits
        self.num_channels = int(num_channels)
        self.signed = signed
        self.init = init
        self.step = nn.Parameter(torch.ones(max(self.num_channels, 1)))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # mirrors ``initialized`` without a tensor read in forward
        self._observing = False
        self._observed: list[torch.Tensor] = []
        self._observed_min = math.inf

    # -- persistence: bits and sign travel with the state dict and are checked on load --
    def get_extra_state(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "num_channels": self.num_channels}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or "bits" not in state:
            raise ValueError("quantizer state in the checkpoint is malformed")
        if state["bits"] != self.bits or state.get("num_channels", 0) != self.num_channels:
            raise ValueError(
                f"checkpoint quantizer has {state['bits']} bits and "
                f"{state.get('num_channels', 0)} channel steps; this model's has {self.bits} "
                f"bits and {self.num_channels}: quantize the model with the checkpoint's settings"
            )
        self.signed = state["signed"]
        # buffers are loaded before the extra state, so the flag is already the checkpoint's
        self._ready = bool(self.initialized)

    def extra_repr(self) -> str:
        kind = f"per_channel={self.num_channels}" if self.num_channels else "per_tensor"
        return f"bits={self.bits}, signed={self.signed}, {kind}"

    @property
    def bounds(self) -> tuple[int, int]:
        if self.signed is None:
            raise RuntimeError("the sign of this quantizer is not known before calibration")
        return _bounds(self.bits, self.signed)

    # -- initialisation --
    def _rows(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(self.num_channels, -1) if self.num_channels else v.reshape(1, -1)

    @torch.no_grad()
    def init_from(self, v: torch.Tensor) -> None:
        """Set the step (and, if still unknown, the sign) from a tensor of values."""
        v = v.detach()
        if self.signed is None:
            self.signed = bool(v.min().item() < 0)
        qn, qp = self.bounds
        rows = self._rows(v)
        step = _mse_step(rows, qn, qp) if self.init == "mse" else _lsq_step(rows, qp)
        self.step.copy_(step.to(self.step))
        self.initialized.fill_(True)
        self._ready = True

    def start_observing(self) -> None:
        self._observing, self._observed, self._observed_min = True, [], math.inf

    @torch.no_grad()
    def finish_observing(self) -> None:
        self._observing = False
        if not self._observed:
            raise RuntimeError("calibration ran no data through this quantizer")
        values = torch.cat(self._observed)
        if self.signed is None:
            self.signed = bool(self._observed_min < 0)
        self._observed = []
        self.init_from(values)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        self._observed_min = min(self._observed_min, flat.min().item())
        budget = _MAX_CALIB_VALUES - sum(t.numel() for t in self._observed)
        if budget <= 0:
            return
        if flat.numel() > budget:
            # deterministic, evenly spread subsample
            idx = torch.linspace(0, flat.numel() - 1, budget, device=flat.device).long()
            flat = flat[idx]
        self._observed.append(flat.cpu())

    # -- forward --
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observing:
            self._observe(x)
            return x
        if not self._ready:
            raise RuntimeError(
                "LSQ step size is not initialised: run coreset_curate.quant.calibrate_(model, "
                "batches) on a few batches of data (or pass calibration= to quantize_model) "
                "before the first forward"
            )
        qn, qp = self.bounds
        per_step = x[0].numel() if not self.num_channels else x.numel() // self.num_channels
        s = grad_scale(self.step, 1.0 / math.sqrt(per_step * qp))
        # the quantizer uses |step|: one SGD update larger than a small step (an 8-bit
        # first layer's is ~1e-2) would otherwise make it negative, which zeroes the layer's
        # output and its gradients for good (a W2A2 run collapsed to chance that way);
        # a positive step is used as it is, so this changes nothing until then
        s = s.abs().clamp_min(_MIN_STEP)
        if self.num_channels:
            s = s.view(-1, *([1] * (x.dim() - 1)))
        else:
            s = s.reshape(())
        return round_ste(torch.clamp(x / s, qn, qp)) * s


class _QuantMixin:
    """Shared parts of the quantized Conv2d and Linear."""

    w_quant: LsqQuantizer | None
    a_quant: LsqQuantizer | None

    def _setup_quant(self, w_bits: int, a_bits: int, per_channel: bool, init: str) -> None:
        out_ch = self.weight.shape[0]
        self.w_quant = (
            LsqQuantizer(w_bits, num_channels=out_ch if per_channel else 0, signed=True, init=init)
            if w_bits != FLOAT_BITS
            else None
        )
        self.a_quant = LsqQuantizer(a_bits, init=init) if a_bits != FLOAT_BITS else None
        if self.w_quant is not None:
            self.w_quant.init_from(self.weight)
        self._wq_cache: tuple | None = None

    def quantized_weight(self) -> torch.Tensor:
        if self.w_quant is None:
            return self.weight
        if self.training or torch.is_grad_enabled():
            self._wq_cache = None
            return self.w_quant(self.weight)
        # eval mode without autograd: quantize the weights once and reuse them
        key = (self.weight._version, self.w_quant.step._version, self.weight.data_ptr(),
               self.w_quant.step.data_ptr(), self.weight.device)
        if self._wq_cache is None or self._wq_cache[0] != key:
            self._wq_cache = (key, self.w_quant(self.weight))
        return self._wq_cache[1]

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.a_quant is None else self.a_quant(x)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with LSQ fake quantization of its weight and input.

    Made by ``quantize_model`` (through ``from_float``); it takes ``nn.Conv2d``'s
    arguments.
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_bits: int, a_bits: int, per_channel: bool = True,
                   init: str = "mse") -> QuantConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        new._setup_quant(w_bits, a_bits, per_channel, init)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with LSQ fake quantization of its weight and input.

    Made by ``quantize_model`` (through ``from_float``); it takes ``nn.Linear``'s
    arguments.
    """

    @classmethod
    def from_float(cls, linear: nn.Linear, w_bits: int, a_bits: int, per_channel: bool = True,
                   init: str = "mse") -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        new._setup_quant(w_bits, a_bits, per_channel, init)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)
