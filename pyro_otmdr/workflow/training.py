"""Epoch loops for ``pyro.infer.SVI``: over in-memory tensors (:func:`fit`) or any batches.

:func:`train` runs ``svi.step`` over the batches of each epoch, skips a batch too small to halve
(a sharpness-aware step needs at least 2 examples), steps a learning-rate scheduler once per epoch
and times every step. :func:`fit` is the same loop over tensors shuffled by a seeded generator.

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from torch.utils.data import DataLoader, TensorDataset
    from pyro_otmdr import OTMDR
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.workflow.training import fit, train

    x_train, y_train = torch.randn(64, 4), torch.randint(3, (64,))
    model = bayesian(torch.nn.Linear(4, 3), num_data=len(x_train))
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=OTMDR(Trace_ELBO(), rho=0.05))
    losses = fit(svi, x_train, y_train, epochs=2, batch_size=32, seed=0)   # a loss per epoch

    scheduler = pyro.optim.CosineAnnealingLR({"optimizer": torch.optim.SGD,
                                              "optim_args": {"lr": 0.1}, "T_max": 2})
    svi = SVI(model, guide, scheduler, loss=OTMDR(Trace_ELBO(), rho=0.05))
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True)
    stats = train(svi, lambda epoch: loader, epochs=2, scheduler=scheduler)
    assert len(losses) == len(stats) == 2 and stats[-1].steps == 2   # EpochStats per epoch
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.util import torch_item, zero_grads
from tqdm.auto import tqdm

from ..model_space import NonFiniteLossError

__all__ = ["EpochStats", "checked_step", "fit", "shuffled_batches", "train"]


@dataclass(frozen=True)
class EpochStats:
    """What one epoch of :func:`train` measured.

    :ivar epoch: the epoch's index, from 0.
    :ivar loss: the mean of the step losses.
    :ivar steps: the number of steps taken.
    :ivar step_seconds: the summed wall time of the timed steps.
    :ivar timed_steps: the steps timed (all but the run's very first, which sets things up).
    :ivar seconds: the epoch's wall time, data loading included.
    :ivar skipped: the batches skipped because their step raised
        :class:`~pyro_otmdr.NonFiniteLossError` (``skip_nonfinite=True``).
    """

    epoch: int
    loss: float
    steps: int
    step_seconds: float
    timed_steps: int
    seconds: float
    skipped: int = 0

    @property
    def step_ms(self) -> float:
        """Mean milliseconds per timed step (``nan`` when none was timed)."""
        return 1e3 * self.step_seconds / self.timed_steps if self.timed_steps else float("nan")


def shuffled_batches(
    *tensors: torch.Tensor, batch_size: int, seed: int | None = None, generator=None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Shuffled minibatches of ``tensors`` (split on dim 0), from ``generator`` or ``seed``."""
    size = len(tensors[0])
    if any(len(t) != size for t in tensors):
        raise ValueError("all tensors must have the same length on dim 0")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    for idx in torch.randperm(size, generator=generator).split(batch_size):
        yield tuple(t[idx.to(t.device)] for t in tensors)


def _sync(batch: Sequence[torch.Tensor]) -> None:
    """Wait for queued CUDA work so that a step's wall time is its own."""
    for t in batch:
        if isinstance(t, torch.Tensor) and t.is_cuda:
            torch.cuda.synchronize(t.device)
            return


def checked_step(svi: SVI, *args, **kwargs) -> float:
    """``svi.step(*args, **kwargs)`` that refuses a NaN or infinite loss before the optimiser
    moves anything, for any loss (Pyro's own ELBOs included).

    A batch with a NaN or infinite input is refused before the model sees it (with Pyro's
    validation on, the model would raise a ``ValueError`` of its own instead).

    :raises NonFiniteLossError: the parameters, their gradients and the optimiser's state are as
        they were before the step.
    """
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            raise NonFiniteLossError(
                "the batch holds a NaN or infinite input; the step was not taken"
            )
    with poutine.trace(param_only=True) as capture:
        loss = svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs)
    params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    value = torch_item(loss)
    if not math.isfinite(value):
        zero_grads(params)
        raise NonFiniteLossError(
            f"the loss is {value}; the step was not taken (parameters and optimiser unchanged)"
        )
    svi.optim(params)
    zero_grads(params)
    return value


def _run_epoch(
    svi: SVI,
    epoch: int,
    batches: Iterable[Sequence],
    first: bool,
    quiet: bool | None,
    skip_nonfinite: bool,
) -> EpochStats:
    start = time.perf_counter()
    losses: list[float] = []
    step_seconds, timed, skipped = 0.0, 0, 0
    step = functools.partial(checked_step, svi) if skip_nonfinite else svi.step
    bar = tqdm(batches, desc=f"epoch {epoch}", unit="step", leave=False, disable=quiet)
    for batch in bar:
        if len(batch[0]) < 2:
            continue
        _sync(batch)
        tick = time.perf_counter()
        try:
            losses.append(step(*batch))
        except NonFiniteLossError:
            if not skip_nonfinite:
                raise
            skipped += 1
            continue
        _sync(batch)
        if not (first and len(losses) == 1):
            step_seconds += time.perf_counter() - tick
            timed += 1
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
    if not losses:
        raise ValueError(
            f"epoch {epoch} took no step: {skipped} batches skipped as non-finite"
            if skipped
            else "an epoch had no batch of at least 2 examples"
        )
    mean = sum(losses) / len(losses)
    seconds = time.perf_counter() - start
    return EpochStats(epoch, mean, len(losses), step_seconds, timed, seconds, skipped)


def train(
    svi: SVI,
    batches: Callable[[int], Iterable[Sequence[torch.Tensor]]],
    *,
    epochs: int,
    start_epoch: int = 0,
    scheduler=None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: bool | None = None,
    skip_nonfinite: bool = False,
) -> list[EpochStats]:
    """Run ``epochs`` epochs of ``svi.step(*batch)`` over ``batches(epoch)``.

    :param batches: ``batches(epoch)`` gives the epoch's batches (tuples of tensors, already on
        the model's device), e.g. a ``DataLoader`` or :func:`shuffled_batches`.
    :param scheduler: a ``pyro.optim.PyroLRScheduler`` (the optimiser of ``svi``): its ``step()``
        is called after each epoch, so a cosine schedule anneals over epochs.
    :param on_epoch: called with each epoch's :class:`EpochStats`.
    :param start_epoch: the first epoch to run, to resume a run that stopped after
        ``start_epoch`` epochs.
    :param progress: a progress bar over each epoch's steps, with the last step's loss;
        default (``None``): only when stderr is a terminal, so logs stay readable.
    :param skip_nonfinite: skip a batch whose loss is NaN or infinite, with the parameters and
        the optimiser's state as they were (steps go through :func:`checked_step`), and count it
        in :attr:`EpochStats.skipped`; by default such a batch raises
        :class:`~pyro_otmdr.NonFiniteLossError`.
    """
    if epochs < 1 or not 0 <= start_epoch <= epochs:
        raise ValueError(
            f"need epochs >= 1 and 0 <= start_epoch <= epochs, got {epochs}, {start_epoch}"
        )
    history = []
    quiet = None if progress is None else not progress  # tqdm: None = off unless a terminal
    for epoch in range(start_epoch, epochs):
        first = epoch == start_epoch
        history.append(_run_epoch(svi, epoch, batches(epoch), first, quiet, skip_nonfinite))
        if scheduler is not None:
            scheduler.step()
        if on_epoch is not None:
            on_epoch(history[-1])
    return history


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
    generator = torch.Generator().manual_seed(seed)
    stats = train(
        svi,
        lambda epoch: shuffled_batches(*tensors, batch_size=batch_size, generator=generator),
        epochs=epochs,
        on_epoch=None if on_epoch is None else lambda s: on_epoch(s.epoch, s.loss),
    )
    return [s.loss for s in stats]
