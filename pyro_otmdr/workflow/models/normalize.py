"""Input normalisation as a module in front of a network, as RobustBench models carry it.

The data stay in their natural box (``[0, 1]`` pixels) so that attack budgets are in the data's
own units; the model standardises its inputs itself.

Usage::

    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.workflow.data import load_dataset
    from pyro_otmdr.workflow.models import Normalize, build_model

    splits = load_dataset("digits")
    net = build_model("mlp", splits.num_classes, in_features=64, hidden=(32,))
    normalize = Normalize(*splits.normalization)
    model = bayesian(net, num_data=len(splits.train), input_transform=normalize)
    x, y = splits.train.tensors
    logits = model(x[:8], y[:8])           # x stays in [0, 1]; the model standardises it
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

        import torch
        from torch import nn
        from pyro_otmdr.workflow.models import Normalize, build_model

        mean, std = torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.25)   # per channel
        net = nn.Sequential(Normalize(mean, std), build_model("cnn", 10, in_channels=3))
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert torch.equal(Normalize(mean, std)(torch.full((1, 3, 1, 1), 0.75)),
                           torch.ones(1, 3, 1, 1))                # (0.75 - 0.5) / 0.25
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
