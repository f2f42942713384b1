"""torchvision's MobileNetV2, EfficientNet-B0 and DenseNet-121, adapted to 32x32 inputs.

The networks are torchvision's own (``weights=None``: nothing is ever downloaded);
only their stems change. ImageNet stems downsample 4x (MobileNetV2, EfficientNet:
a stride-2 stem and a stride-2 first stage of 24 channels; DenseNet: a 7x7 stride-2
convolution and a max-pool), which leaves 1x1 feature maps at the end for a 32x32
input. Here the stem is a 3x3 stride-1 convolution (and DenseNet's max-pool is
removed; MobileNetV2/EfficientNet's 24-channel stage keeps stride 1), so a 32x32
input ends at 4x4, as in the usual CIFAR versions of these networks.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision import models as tvm

__all__ = ["densenet121_cifar", "efficientnet_b0_cifar", "mobilenet_v2_cifar"]


def _new_stem(old: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A 3x3 stride-1 convolution with ``old``'s output channels and bias setting."""
    conv = nn.Conv2d(
        in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _unstride_first_conv(module: nn.Module) -> None:
    """Give the first strided convolution inside ``module`` stride 1."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d) and sub.stride != (1, 1):
            sub.stride = (1, 1)
            return
    raise ValueError(f"no strided convolution found in {type(module).__name__}")


def mobilenet_v2_cifar(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """torchvision's ``mobilenet_v2`` for 32x32 inputs (about 2.2M parameters).

    ``kwargs`` go to :func:`torchvision.models.mobilenet_v2` (e.g. ``width_mult``).
    """
    net = tvm.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
    net.features[0][0] = _new_stem(net.features[0][0], in_channels)
    _unstride_first_conv(net.features[2])
    return net


def efficientnet_b0_cifar(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """torchvision's ``efficientnet_b0`` for 32x32 inputs (about 4.0M parameters).

    ``kwargs`` go to :func:`torchvision.models.efficientnet_b0` (e.g. ``dropout``).
    """
    net = tvm.efficientnet_b0(weights=None, num_classes=num_classes, **kwargs)
    net.features[0][0] = _new_stem(net.features[0][0], in_channels)
    _unstride_first_conv(net.features[2])
    return net


def densenet121_cifar(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """torchvision's ``densenet121`` for 32x32 inputs (about 7.0M parameters).

    ``kwargs`` go to :func:`torchvision.models.densenet121` (e.g. ``memory_efficient``).
    """
    net = tvm.densenet121(weights=None, num_classes=num_classes, **kwargs)
    net.features.conv0 = _new_stem(net.features.conv0, in_channels)
    net.features.pool0 = nn.Identity()
    return net
