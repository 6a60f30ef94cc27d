import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from coreset_curate.tasks.classification.models import create_model
from coreset_curate.quant import (LsqQuantizer, QuantConv2d, QuantLinear, calibrate_,
                                  quantize_model)


def _batches(n=4, shape=(16, 3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _quantized(arch="resnet20", w=4, a=4, **kw):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    return quantize_model(model, w, a, calibration=_batches(), **kw)


def _qlayers(model):
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weights_take_at_most_2_pow_b_values_per_channel(bits):
    model = _quantized(w=bits, a=bits, first_last="same")
    for layer in _qlayers(model):
        qw = layer.quantized_weight().detach()
        step = layer.w_quant.step.detach().view(-1, *[1] * (qw.dim() - 1))
        codes = qw / step
        # integer codes inside the signed range
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.min() >= -(2 ** (bits - 1)) - 1e-4 and codes.max() <= 2 ** (bits - 1) - 1 + 1e-4
        for row in qw.reshape(qw.shape[0], -1):
            assert len(torch.unique(row)) <= 2**bits


@pytest.mark.parametrize("bits", [2, 4])
def test_activations_take_at_most_2_pow_b_values(bits):
    model = _quantized(w=bits, a=bits, first_last="same")
    seen = []
    hooks = [layer.a_quant.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
             for layer in _qlayers(model)]
    model(_batches(1, seed=5)[0])
    for h in hooks:
        h.remove()
    assert len(seen) == len(_qlayers(model)) > 10
    for out in seen:
        assert len(torch.unique(out)) <= 2**bits


def test_sign_follows_the_data():
    model = _quantized()
    layers = _qlayers(model)
    assert layers[0].a_quant.signed is True  # normalised image input can be negative
    assert all(layer.a_quant.signed is False for layer in layers[1:])  # after a ReLU


def test_gradients_reach_weights_and_step_sizes():
    model = _quantized(w=3, a=3).train()
    x = _batches(1, seed=1)[0]
    y = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    nn.functional.cross_entropy(model(x), y).backward()
    for layer in _qlayers(model):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        assert layer.w_quant.step.grad is not None and layer.w_quant.step.grad.abs().sum() > 0
        assert layer.a_quant.step.grad is not None and layer.a_quant.step.grad.abs().sum() > 0


def test_step_gradient_matches_lsq_formula():
    # L = sum(q(v)); dL/ds = g * sum(-v/s + round(v/s)) inside the range, Qn or Qp outside
    q = LsqQuantizer(3, signed=True, init="lsq")
    v = torch.tensor([[-5.0, -1.3, -0.2, 0.0, 0.26, 0.74, 1.9, 9.0]])
    q.init_from(v)
    with torch.no_grad():
        q.step.fill_(0.5)
    q(v).sum().backward()
    s, qn, qp = 0.5, -4, 3
    expected = 0.0
    for val in v.flatten().tolist():
        r = val / s
        expected += qn if r <= qn else qp if r >= qp else (-r + round(r))
    expected *= 1 / math.sqrt(v[0].numel() * qp)
    assert q.step.grad.item() == pytest.approx(expected, rel=1e-6)
    # straight-through: values inside the range pass gradient 1, clipped values 0
    v2 = v.clone().requires_grad_(True)
    q(v2).sum().backward()
    # codes: -10, -2.6, -0.4, 0, 0.52, 1.48, 3.8, 18 with range [-4, 3]
    assert v2.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]]


def test_a_step_pushed_below_zero_keeps_quantizing_with_its_magnitude():
    # one SGD update larger than a small step (an 8-bit layer's) drives the parameter
    # negative; an unsigned activation quantizer that divided by it would clamp every
    # positive input to 0 and pass no gradient again (a W2A2 run collapsed to chance so)
    q = LsqQuantizer(2, signed=False, init="lsq")
    x = torch.tensor([[0.1, 0.4, 0.7, 1.2, 3.0]])
    q.init_from(x)
    with torch.no_grad():
        q.step.fill_(0.3)
    positive = q(x).detach()
    with torch.no_grad():
        q.step.fill_(-0.3)
    x2 = x.clone().requires_grad_(True)
    out = q(x2)
    assert torch.equal(out.detach(), positive) and out.abs().sum() > 0
    out.sum().backward()
    assert q.step.grad.abs().item() > 0 and x2.grad.abs().sum() > 0  # still learning


def _rel_err(model_q, model_f, x):
    with torch.no_grad():
        a, b = model_q(x), model_f(x)
    return float((a - b).norm() / b.norm())


def test_w8a8_is_close_to_float_and_w2a2_is_not():
    torch.manual_seed(0)
    float_model = create_model("resnet20", num_classes=10).eval()
    x = _batches(1, seed=9)[0]
    import copy
    w8 = quantize_model(copy.deepcopy(float_model), 8, 8, calibration=_batches())
    w2 = quantize_model(copy.deepcopy(float_model), 2, 2, calibration=_batches())
    assert _rel_err(w8.eval(), float_model, x) < 0.05
    assert _rel_err(w2.eval(), float_model, x) > 0.2


def test_save_load_round_trip_is_exact():
    model = _quantized("resnet20", w=4, a=4)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = quantize_model(create_model("resnet20", num_classes=10), 4, 4)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    x = _batches(1, seed=3)[0]
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert [layer.a_quant.signed for layer in _qlayers(fresh)] == \
        [layer.a_quant.signed for layer in _qlayers(model)]


def test_loading_a_checkpoint_of_other_bits_fails_clearly():
    model = _quantized(w=4, a=4)
    other = quantize_model(create_model("resnet20", num_classes=10), 2, 2)
    with pytest.raises(ValueError, match="bits"):
        other.load_state_dict(model.state_dict())


def test_forward_before_calibration_is_refused():
    model = quantize_model(create_model("resnet20", num_classes=10), 4, 4)
    with pytest.raises(RuntimeError, match="calibrate_"):
        model(_batches(1)[0])
    calibrate_(model, _batches(2))
    assert model(_batches(1)[0]).shape == (16, 10)


def test_weight_steps_are_initialised_at_wrap_time():
    model = quantize_model(create_model("resnet20", num_classes=10), 4, 4)
    for layer in _qlayers(model):
        assert bool(layer.w_quant.initialized)
        assert not bool(layer.a_quant.initialized)


@pytest.mark.parametrize("first_last,expected", [("int8", (8, 8)), ("same", (2, 2)),
                                                 ("float", None)])
def test_first_and_last_layer_options(first_last, expected):
    model = quantize_model(create_model("resnet20", num_classes=10), 2, 2, first_last=first_last)
    first, last = model.conv1, model.fc
    middle = model.layers[0][0].conv1
    assert (middle.w_quant.bits, middle.a_quant.bits) == (2, 2)
    if expected is None:
        assert type(first) is nn.Conv2d and type(last) is nn.Linear
    else:
        assert (first.w_quant.bits, first.a_quant.bits) == expected
        assert (last.w_quant.bits, last.a_quant.bits) == expected


def test_per_tensor_option_and_float_activations():
    model = quantize_model(create_model("resnet20", num_classes=10), 4, 32, per_channel=False,
                           calibration=_batches(1))
    for layer in _qlayers(model):
        assert layer.w_quant.step.numel() == 1
        assert layer.a_quant is None


def test_weights_are_shared_and_keys_kept():
    model = create_model("resnet20", num_classes=10)
    keys = set(model.state_dict())
    w = model.conv1.weight
    quantize_model(model, 4, 4)
    assert model.conv1.weight is w
    assert keys <= set(model.state_dict())


@pytest.mark.parametrize("bad", [1, 9, 16, 0, "4", 4.0, True])
def test_invalid_bits_are_refused(bad):
    with pytest.raises(ValueError, match="2..8"):
        quantize_model(create_model("resnet20", num_classes=10), bad, 4)


def test_quantizing_twice_is_refused():
    model = quantize_model(create_model("resnet20", num_classes=10), 4, 4)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, 4, 4)


def test_eval_reuses_quantized_weights_until_they_change():
    model = _quantized().eval()
    layer = _qlayers(model)[1]
    with torch.no_grad():
        a = layer.quantized_weight()
        b = layer.quantized_weight()
        assert a is b
        layer.weight.mul_(2.0)
        c = layer.quantized_weight()
    assert c is not a and not torch.equal(c, a)
    model.train()
    d = layer.quantized_weight()
    assert d.requires_grad


@pytest.mark.parametrize("init", ["mse", "lsq"])
def test_mse_init_is_no_worse_than_lsq_on_weights(init):
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    errs = {}
    for method in ("mse", "lsq"):
        q = LsqQuantizer(3, num_channels=8, signed=True, init=method)
        q.init_from(w)
        with torch.no_grad():
            errs[method] = float((q(w) - w).pow(2).sum())
    assert errs["mse"] <= errs["lsq"] + 1e-6
    assert np.isfinite(errs[init])

