"""Wide residual networks (Zagoruyko & Komodakis, 2016) for 32x32 images."""

from __future__ import annotations

import torch
from torch import nn

from .resnet import init_resnet_weights

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet", "wrn28_10"]


class WideBasicBlock(nn.Module):
    """A pre-activation block ``BN -> ReLU -> conv3x3 -> BN -> ReLU -> dropout -> conv3x3``.

    When the shape changes, a 1x1 convolution of the pre-activated input is the shortcut.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k: a 3x3 stem of 16 channels and three groups of widths ``16k, 32k, 64k``.

    Each group has ``(depth - 4) / 6`` :class:`WideBasicBlock` s; the second and third
    halve the resolution. A final BN-ReLU, global average pool and linear layer
    give the logits.

    :param depth: total depth, ``6 n + 4`` (28 for WRN-28-10).
    :param widen_factor: the width multiplier k (10 for WRN-28-10).
    :param num_classes: the number of classes (logits).
    :param in_channels: input channels.
    :param dropout: dropout probability inside each block (0 for none).

    Usage::

        import torch
        from pyro_otmdr.workflow.models import WideResNet

        net = WideResNet(depth=16, widen_factor=4, num_classes=10)   # WRN-16-4
        logits = net(torch.randn(2, 3, 32, 32))
        assert logits.shape == (2, 10)
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(
                f"depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}"
            )
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive int, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        num_blocks = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        groups, fan_in = [], 16
        for i, fan_out in enumerate(widths):
            blocks = [
                WideBasicBlock(
                    fan_in if j == 0 else fan_out, fan_out, 2 if i and not j else 1, dropout
                )
                for j in range(num_blocks)
            ]
            groups.append(nn.Sequential(*blocks))
            fan_in = fan_out
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(fan_in)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(fan_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        init_resnet_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn(x))).flatten(1))


def wide_resnet(
    num_classes: int,
    in_channels: int = 3,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """A generic WRN-depth-widen_factor builder (defaults: WRN-28-10)."""
    return WideResNet(depth, widen_factor, num_classes, in_channels, dropout)


def wrn28_10(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WideResNet-28-10, about 36.5M parameters."""
    return WideResNet(28, 10, num_classes, in_channels, dropout)
