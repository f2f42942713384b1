"""ResNets with a CIFAR stem (3x3 convolution, stride 1, no max-pool), as in the paper."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "resnet10", "resnet18"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A ResNet of :class:`BasicBlock` stages for small (32x32) images.

    The stem is one 3x3 convolution at full resolution (no 7x7 convolution, no
    max-pool); four stages of widths ``width * (1, 2, 4, 8)`` follow, the last three
    halving the resolution, then a global average pool and a linear layer.

    :param blocks: the number of blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    :param num_classes: the number of classes (logits).
    :param in_channels: input channels.
    :param width: channels of the first stage (64 in the paper's networks).

    Usage::

        import torch
        from pyro_otmdr.workflow.models import CifarResNet

        net = CifarResNet((2, 2, 2, 2), num_classes=10, width=16)   # ResNet-18 at 1/4 width
        logits = net(torch.randn(2, 3, 32, 32))
        assert logits.shape == (2, 10)
    """

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be four positive ints, got {blocks}")
        if width < 1:
            raise ValueError(f"width must be a positive int, got {width}")
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, fan_in = [], width
        for i, num_blocks in enumerate(blocks):
            fan_out = width * 2**i
            stages.append(self._stage(fan_in, fan_out, num_blocks, stride=1 if i == 0 else 2))
            fan_in = fan_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(fan_in, num_classes)
        init_resnet_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def init_resnet_weights(net: nn.Module) -> None:
    """He-normal convolutions, unit/zero BatchNorm affine (torchvision's ResNet scheme)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def resnet10(num_classes: int, in_channels: int = 3, width: int = 64) -> CifarResNet:
    """ResNet-10 (one block per stage) with a CIFAR stem, about 4.9M parameters."""
    return CifarResNet((1, 1, 1, 1), num_classes, in_channels, width)


def resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> CifarResNet:
    """ResNet-18 (two blocks per stage) with a CIFAR stem, about 11.2M parameters."""
    return CifarResNet((2, 2, 2, 2), num_classes, in_channels, width)
