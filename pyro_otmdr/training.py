"""A minimal epoch loop over in-memory tensors for ``pyro.infer.SVI``.

It shuffles with its own seeded generator, drops a last batch too small to halve (a
sharpness-aware step needs at least 2 examples) and returns the mean loss of each epoch.

Usage::

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=OTMDR(Trace_ELBO(), rho=0.05))
    losses = fit(svi, x_train, y_train, epochs=20, batch_size=128, seed=0)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.infer import SVI

__all__ = ["fit"]


def fit(
    svi: SVI,
    *tensors: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``svi`` for ``epochs`` passes over ``tensors`` (split on dim 0) in shuffled batches.

    :param on_epoch: called as ``on_epoch(epoch, mean_loss)`` after each epoch.
    :returns: the mean step loss of each epoch.
    """
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    size = len(tensors[0])
    if any(len(t) != size for t in tensors):
        raise ValueError("all tensors must have the same length on dim 0")
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        perm = torch.randperm(size, generator=generator)
        losses = [
            svi.step(*(t[idx.to(t.device)] for t in tensors))
            for idx in perm.split(batch_size)
            if len(idx) >= 2
        ]
        history.append(sum(losses) / len(losses))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history
