"""Small networks for flat features and small images: an MLP and a BatchNorm CNN."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN"]


class MLP(nn.Sequential):
    """A multilayer perceptron ``Linear -> activation -> ... -> Linear`` returning logits.

    Inputs are flattened from dimension 1 on, so ``(N, 64)`` features and
    ``(N, 1, 8, 8)`` images both work. Parameters are named ``"0.weight"``,
    ``"2.weight"``, ... (every other layer is the activation, or the dropout).

    :param in_features: the number of input features (64 for scikit-learn digits).
    :param num_classes: the number of classes (logits).
    :param hidden: the hidden layer sizes; ``()`` gives multinomial logistic regression.
    :param activation: a module factory for the non-linearity.
    :param dropout: dropout probability after each activation (0 for none).

    Usage::

        import torch
        from pyro_otmdr.workflow.models import MLP

        net = MLP(64, 10, hidden=(100, 100))
        logits = net(torch.randn(5, 64))
        assert logits.shape == (5, 10)
        assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)   # images are flattened
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (128, 128),
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        sizes = [in_features, *hidden]
        if any(int(size) < 1 for size in sizes):
            raise ValueError(f"in_features and hidden sizes must be positive, got {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], num_classes))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


class SmallCNN(nn.Module):
    """A small CNN, ``[conv3x3 -> BatchNorm -> ReLU (-> max-pool)] x stages``, for 8x8 or 32x32.

    Every stage but the last halves the resolution; a global average pool and a
    linear layer follow, so any input of at least ``2 ** (stages - 1)`` pixels works.
    Parameters are named ``"features.0.weight"`` (conv), ``"features.1.weight"``
    (BatchNorm), ..., ``"classifier.weight"``.

    :param in_channels: input channels (1 for digits images, 3 for CIFAR).
    :param num_classes: the number of classes (logits).
    :param channels: output channels of each stage.

    Usage::

        import torch
        from pyro_otmdr.workflow.models import SmallCNN

        net = SmallCNN(1, 10)
        logits = net(torch.randn(5, 1, 8, 8))
        assert logits.shape == (5, 10)
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64, 128)
    ) -> None:
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        layers: list[nn.Module] = []
        fan_in = in_channels
        for i, fan_out in enumerate(channels):
            layers += [
                nn.Conv2d(fan_in, fan_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(fan_out),
                nn.ReLU(inplace=True),
            ]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            fan_in = fan_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(fan_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
