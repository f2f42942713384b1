"""Input normalisation as a module in front of a network, as RobustBench models carry it.

The data stay in their natural box (``[0, 1]`` pixels) so that attack budgets are in the data's
own units; the model standardises its inputs itself.

Usage::

    splits = load_dataset("digits")
    normalize = Normalize(*splits.normalization)
    model = bayesian(net, num_data=len(splits.train), input_transform=normalize)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` with ``mean`` and ``std`` broadcastable to one input (buffers).

    :param mean: per-feature (``(64,)``) or per-channel (``(C, 1, 1)``) means.
    :param std: standard deviations of the same shape, all > 0.

    Usage::

        net = nn.Sequential(Normalize(mean, std), build_model("cnn", 10, in_channels=3))
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        mean, std = (
            torch.as_tensor(mean, dtype=torch.float32),
            torch.as_tensor(std, dtype=torch.float32),
        )
        if mean.shape != std.shape or not bool((std > 0).all()):
            raise ValueError("mean and std must have the same shape and std must be > 0")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
