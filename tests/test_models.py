import pytest
import torch
from torch import nn

from coreset_curate.tasks.classification.models import MODELS, create_model, last_linear, list_models, register_model
from coreset_curate.quant import quantize_model


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,millions", [("resnet20", 0.27), ("resnet32", 0.46),
                                           ("resnet56", 0.85), ("resnet18_cifar", 11.17)])
def test_cifar_resnet_sizes_match_the_papers(name, millions):
    # He et al. 2016, Table 6: ResNet-20/32/56 have 0.27M/0.46M/0.85M parameters
    assert round(_params(create_model(name, num_classes=10)) / 1e6, 2) == millions


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_runs_and_quantizes(name):
    torch.manual_seed(0)
    in_ch = 1 if name == "small_cnn" else 3
    model = create_model(name, num_classes=7, in_channels=in_ch).eval()
    x = torch.randn(2, in_ch, 32, 32)
    assert model(x).shape == (2, 7)
    quantize_model(model, 4, 4, calibration=[x])
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert last_linear(model).out_features == 7


def test_cifar_models_keep_resolution_until_late_stages():
    feats = {}
    model = create_model("resnet18_cifar", num_classes=10).eval()
    model.layers[0].register_forward_hook(lambda m, i, o: feats.update(s1=o.shape))
    model(torch.randn(1, 3, 32, 32))
    assert feats["s1"][-2:] == (32, 32)  # 3x3 stem, no max-pool
    mb = create_model("mobilenetv2_cifar", num_classes=10, width=0.5).eval()
    assert mb.features[0][0].stride == (1, 1)
    assert mb.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_mobilenet_width_multiplier_shrinks_the_model():
    full = _params(create_model("mobilenetv2_cifar", num_classes=100))
    half = _params(create_model("mobilenetv2_cifar", num_classes=100, width=0.5))
    assert half < 0.5 * full


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(ValueError, match="resnet20") as err:
        create_model("resnet21", num_classes=10)
    assert "unknown model 'resnet21'" in str(err.value)


@pytest.mark.parametrize("bad", [1, 0, "10", 2.5])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_classes=bad)


def test_register_model_adds_by_name_and_refuses_duplicates():
    @register_model("tiny_test_net")
    def tiny(num_classes, in_channels=3):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, num_classes))

    try:
        assert "tiny_test_net" in list_models()
        assert create_model("tiny_test_net", num_classes=3).__class__ is nn.Sequential
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_net")(tiny)
    finally:
        MODELS.pop("tiny_test_net")
