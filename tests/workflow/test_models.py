"""Tests of the model zoo: names, output shapes, parameter counts, 32x32 adaptations."""

import pytest
import torch
from torch import nn

from pyro_otmdr.workflow.models import MLP, MODEL_NAMES, SmallCNN, WideResNet, build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# name -> (build kwargs, plausible parameter range for 10 classes)
IMAGE_NETS = {
    "cnn": ({}, (5e4, 2e5)),
    "resnet10": ({}, (4.5e6, 5.5e6)),
    "resnet18": ({}, (10.5e6, 12e6)),
    "wrn28_10": ({}, (35e6, 38e6)),
    "wrn": (dict(depth=16, widen_factor=2), (6e5, 8e5)),
    "mobilenet_v2": ({}, (2e6, 2.5e6)),
    "efficientnet_b0": ({}, (3.8e6, 4.3e6)),
    "densenet121": ({}, (6.5e6, 7.5e6)),
}


def test_registry_lists_every_model():
    assert set(MODEL_NAMES) == {"mlp", *IMAGE_NETS}


TORCHVISION_NETS = {"mobilenet_v2", "efficientnet_b0", "densenet121"}


@pytest.mark.parametrize("name", list(IMAGE_NETS))
def test_image_nets_on_32x32(name):
    kwargs, (low, high) = IMAGE_NETS[name]
    net = build_model(name, num_classes=10, **kwargs).eval()
    assert low <= _count(net) <= high
    seen = []
    if name in TORCHVISION_NETS:  # the adapted stems leave 4x4 maps, not 1x1
        net.features.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    batch = 1 if name == "wrn28_10" else 2
    with torch.no_grad():
        out = net(torch.randn(batch, 3, 32, 32))
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()
    if name in TORCHVISION_NETS:
        assert seen[0][-2:] == (4, 4)


def test_paper_resnet_and_wrn_sizes_match_the_literature():
    assert _count(build_model("resnet18", 10)) == 11_173_962
    assert _count(build_model("wrn28_10", 10)) == 36_479_194


def test_torchvision_nets_accept_other_channels_and_classes():
    net = build_model("mobilenet_v2", num_classes=100, in_channels=1).eval()
    assert net.features[0][0].in_channels == 1
    assert net.features[0][0].stride == (1, 1)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32)).shape == (1, 100)


def test_densenet_stem_has_no_max_pool():
    net = build_model("densenet121", num_classes=10)
    assert net.features.conv0.kernel_size == (3, 3) and net.features.conv0.stride == (1, 1)
    assert isinstance(net.features.pool0, nn.Identity)


def test_mlp_flat_and_image_inputs_and_hidden_sizes():
    net = build_model("mlp", 10, in_features=64, hidden=(32, 16))
    assert isinstance(net, MLP)
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [32, 16, 10]
    assert net(torch.randn(5, 64)).shape == (5, 10)
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert [n for n, _ in net.named_parameters()][:2] == ["0.weight", "0.bias"]
    logistic = build_model("mlp", 3, in_features=4, hidden=())
    assert len(logistic) == 1


def test_mlp_dropout():
    net = MLP(8, 2, hidden=(4,), dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in net)
    with pytest.raises(ValueError, match="dropout"):
        MLP(8, 2, dropout=1.0)


@pytest.mark.parametrize("size", [8, 32])
def test_cnn_has_batchnorm_and_works_on_8x8_and_32x32(size):
    net = build_model("cnn", 10, in_channels=1 if size == 8 else 3)
    assert isinstance(net, SmallCNN)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    channels = 1 if size == 8 else 3
    assert net(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_resnet_width_and_blocks():
    net = build_model("resnet18", 100, width=8)
    assert net.conv1.out_channels == 8 and net.fc.in_features == 64
    assert len(net.layer1) == 2 and len(build_model("resnet10", 10).layer1) == 1
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


def test_generic_wide_resnet():
    net = build_model("wrn", 10, depth=10, widen_factor=1, dropout=0.3)
    assert isinstance(net, WideResNet)
    assert len(net.block1) == 1
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6 n \\+ 4"):
        build_model("wrn", 10, depth=27)


def test_build_model_errors():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet50", 10)
    with pytest.raises(ValueError, match="in_features"):
        build_model("mlp", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn", 0)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("cnn", 10, in_channels=0)
