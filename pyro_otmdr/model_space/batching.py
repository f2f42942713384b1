"""Splitting a minibatch, given as model arguments, into two random halves.

The batch size is the leading dimension of the first tensor argument (positional arguments first,
then keyword arguments in order). Every tensor argument whose leading dimension equals it is split
along dim 0 with the same random permutation; everything else is passed to both halves unchanged.

With Pyro's minibatch idiom ``pyro.plate("data", size=N, subsample_size=len(x))`` each half is
scaled by ``N / len(half)`` on its own, so the loss of a half is an unbiased estimate of the same
objective as the loss of the whole batch.

A step's batch also carries its row numbers (:func:`with_rows`: ``arange(B)`` as one more keyword
argument), split with the data like any batch-aligned tensor, so that each pass knows which
examples of the whole batch it holds: the fixed noise of a local latent variable follows its
example (:mod:`.reparam_noise`). :func:`without_rows` takes them out again before the model and
guide see the arguments.

Usage::

    import torch
    from pyro_otmdr.model_space.batching import split_in_halves

    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    g = torch.Generator().manual_seed(0)
    (args1, kwargs1), (args2, kwargs2) = split_in_halves((x, y), {}, g)
    assert args1[0].shape == args2[0].shape == (4, 4) and kwargs1 == kwargs2 == {}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "ROWS_KEY",
    "Batch",
    "BatchSplitter",
    "batch_size_of",
    "split_in_halves",
    "with_rows",
    "without_rows",
]

Batch = tuple[tuple[Any, ...], dict[str, Any]]
"""Positional and keyword arguments of one call of the model and guide."""

BatchSplitter = Callable[[tuple[Any, ...], dict[str, Any], torch.Generator], tuple[Batch, Batch]]
"""``split(args, kwargs, generator) -> ((args1, kwargs1), (args2, kwargs2))``."""

ROWS_KEY = "_pyro_otmdr_rows"
"""The keyword argument under which a step's batch carries its row numbers."""


def batch_size_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The leading dimension of the first tensor argument.

    Usage::

        import torch
        from pyro_otmdr.model_space.batching import batch_size_of

        assert batch_size_of((torch.zeros(8, 3),), {}) == 8
        assert batch_size_of((None,), {"x": torch.zeros(5, 2)}) == 5   # keyword arguments too
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return value.shape[0]
    raise ValueError(
        "found no tensor argument with a batch dimension to split into halves: pass the minibatch "
        "as tensor arguments of the model and guide (e.g. svi.step(x, y)), or give "
        "split_batch=... to say how to split it"
    )


def split_in_halves(
    args: tuple[Any, ...], kwargs: dict[str, Any], generator: torch.Generator
) -> tuple[Batch, Batch]:
    """Split every tensor argument with the batch's leading dimension into two random halves.

    For an odd batch size the second half is one element larger. A fresh permutation is drawn
    from ``generator`` at each call.

    Usage::

        import torch
        from pyro_otmdr.model_space.batching import split_in_halves

        x, y = torch.arange(7.0), torch.arange(7)
        (a1, k1), (a2, k2) = split_in_halves((x, y), {}, torch.Generator().manual_seed(0))
        assert len(a1[0]) == 3 and len(a2[0]) == 4          # odd: the second half is larger
        assert torch.equal(a1[0].long(), a1[1])             # x and y split alike
    """
    size = batch_size_of(args, kwargs)
    if size < 2:
        raise ValueError(
            f"a batch of size {size} cannot be split into two non-empty halves: OT-MDR needs "
            "minibatches of at least 2 examples"
        )
    perm = torch.randperm(size, generator=generator, device=generator.device)
    first, second = perm[: size // 2], perm[size // 2 :]
    return _select(args, kwargs, size, first), _select(args, kwargs, size, second)


def _select(args: tuple[Any, ...], kwargs: dict[str, Any], size: int, index: torch.Tensor) -> Batch:
    def take(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == size:
            return value.index_select(0, index.to(value.device))
        return value

    return tuple(take(a) for a in args), {k: take(v) for k, v in kwargs.items()}


def with_rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Batch:
    """The batch with its row numbers, ``arange(B)`` under :data:`ROWS_KEY`, as one more
    keyword argument (on the CPU, like the split's permutation), so that a split that splits
    every batch-aligned tensor splits them with the data. Unchanged when no argument is a tensor
    with a batch dimension.

    Usage::

        import torch
        from pyro_otmdr.model_space.batching import split_in_halves, with_rows, without_rows

        x = torch.arange(6.0) * 10
        args, kwargs = with_rows((x,), {})
        half, _ = split_in_halves(args, kwargs, torch.Generator().manual_seed(0))
        (args1, kwargs1), rows = without_rows(half)
        assert kwargs1 == {} and torch.equal(args1[0], x[rows])   # the rows of x it holds
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return args, {**kwargs, ROWS_KEY: torch.arange(value.shape[0])}
    return args, kwargs


def without_rows(batch: Batch) -> tuple[Batch, torch.Tensor | None]:
    """The batch without its row numbers, and the row numbers (``None`` when it has none: a
    split that dropped them, or a batch that never had them)."""
    args, kwargs = batch
    if ROWS_KEY not in kwargs:
        return batch, None
    kwargs = dict(kwargs)
    rows = kwargs.pop(ROWS_KEY)
    return (args, kwargs), rows
