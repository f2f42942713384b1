"""Keep normalisation layers' running statistics to one update per training step.

A sharpness-aware step runs the network several times; BatchNorm would otherwise update its
running mean and variance at every pass. :class:`RunningStatsGuard` finds every normalisation layer
that runs while it is active (a global forward pre-hook, so it needs no handle on the user's
modules), saves its buffers before their first update, and lets exactly one chosen pass count.

Usage::

    import torch
    from pyro_otmdr.model_space.running_stats import RunningStatsGuard

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))   # train mode
    x = torch.randn(8, 4)
    with RunningStatsGuard() as guard:
        net(x[:4])              # an ascent pass: its update is undone at the end
        guard.begin_counted()
        net(x)                  # the full batch's pass: this update is kept
        guard.end_counted()
        net(x[4:])              # undone
    assert net[1].num_batches_tracked == 1      # one update per step
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

__all__ = ["RunningStatsGuard", "ran_compiled"]

_ACTIVE: list[RunningStatsGuard] = []
"""The guards whose block is running, innermost last."""


class RunningStatsGuard:
    """Save running statistics on first sight; restore them to the counted pass's result on exit.

    If no pass was counted, or the block raises, the statistics go back to their values at entry.
    """

    def __init__(self) -> None:
        self._saved: dict[nn.Module, dict[str, torch.Tensor]] = {}
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self.saw_batch_stats = False
        """Whether a batch-norm layer normalised with the batch's own statistics: then a
        batch's loss is no per-example mean and halves do not average to the whole."""

    def __enter__(self) -> RunningStatsGuard:
        self._handle = nn.modules.module.register_module_forward_pre_hook(self._on_forward)
        _ACTIVE.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._handle is not None
        self._handle.remove()
        _ACTIVE.remove(self)
        self._restore()

    def begin_counted(self) -> None:
        """Reset the statistics to their values at entry: the next pass's update is the step's."""
        self._restore()

    def end_counted(self) -> None:
        """Keep the statistics as they are now: this is what :meth:`__exit__` restores."""
        for module, buffers in self._saved.items():
            for name, value in buffers.items():
                value.copy_(getattr(module, name))

    def _on_forward(self, module: nn.Module, inputs: object) -> None:
        if isinstance(module, _BatchNorm) and (module.training or not module.track_running_stats):
            self.saw_batch_stats = True
        if module in self._saved or not _tracks_stats(module):
            return
        self._saved[module] = {
            name: buf.detach().clone()
            for name, buf in module.named_buffers(recurse=False)
            if buf is not None
        }

    @torch.no_grad()
    def _restore(self) -> None:
        for module, buffers in self._saved.items():
            for name, value in buffers.items():
                getattr(module, name).copy_(value)


def _tracks_stats(module: nn.Module) -> bool:
    return isinstance(module, _NormBase) and module.training and module.track_running_stats


def ran_compiled(modules: list[nn.Module]) -> None:
    """Tell the running guards that a compiled graph is about to run ``modules``.

    A compiled pass (:mod:`.jit`) runs the network without calling any module's ``forward``, so
    no forward hook sees it: the guards save these modules' statistics (and note batch
    statistics) as a forward would have made them. Call it before the graph runs.

    Usage::

        import torch
        from pyro_otmdr.model_space.running_stats import RunningStatsGuard, ran_compiled

        bn = torch.nn.BatchNorm1d(4)
        with RunningStatsGuard() as guard:
            ran_compiled([bn])
            bn.running_mean.add_(1.0)          # what the graph's batch norm does in place
        assert guard.saw_batch_stats and torch.equal(bn.running_mean, torch.zeros(4))
    """
    for guard in _ACTIVE:
        for module in modules:
            guard._on_forward(module, ())
