"""The gradient of the parameters a step does not perturb: the whole batch's, at the centre.

A sharpness-aware step moves only the perturbed parameters ``theta``. The others, ``phi`` (an
AutoNormal's scales, an ensemble member's fixed sites), take the whole batch's gradient at the
unperturbed point (the centre), ``grad_phi L_B(theta, phi)``. :class:`CenterGradient` gets it
at the least cost that is exact, in this order of preference:

1. SAM: its ascent pass is on the whole batch at the centre; its gradient is kept (no pass).
2. OT-MDR, when the loss is a per-example mean: the first particle's first ascent pass is on
   the half ``B1`` at the centre; one more pass on the other half ``B2`` there gives the whole
   batch's gradient as ``(|B1| g_B1 + |B2| g_B2) / |B|`` (half a pass).
3. Otherwise one more pass on the whole batch at the centre.

Why 2 is exact: under Pyro's plate idiom, ``pyro.plate("data", size=N, subsample_size=|b|)``,
each example's term is scaled by ``N / |b|``, so the loss of a batch ``b`` is::

    L_b(theta) = G(theta) + c / |b| * sum_{i in b} l_i(theta)

with ``G`` the terms outside the plate (prior, guide), the same for every batch, and ``c = N``.
When ``B1`` and ``B2`` partition ``B``, ``|B1| L_B1 + |B2| L_B2 = |B| G + c sum_{i in B} l_i =
|B| L_B``, and so for the gradients. It fails for a batch-dependent term outside the plate (a
``pyro.factor``), a plate without subsampling (a sum, not a mean), halves that do not partition
the batch (a custom split), BatchNorm normalising with the batch's own statistics (an example's
term depends on the others) and a rank-local gradient (the ascent passes under DDP's
``no_sync``). The front end's ``mean_over_examples()`` answers for the loss
(:mod:`.subsampling` watches the plates), the step says whether a batch-norm layer used the
batch's statistics, the batch sizes say whether the halves partition it; in any doubt, case 3.

In every other pass the gradient of ``phi`` would be thrown away (at a perturbed point, or a
later particle's first pass, on a different half), so ``phi`` are constants there
(:func:`frozen_constants`: ``requires_grad`` off, the backward skips them and the graph through
them; :class:`~.savings.StepSavings` ``frozen_constants``). Not under DDP's ``no_sync``: DDP
expects every parameter's gradient.

Usage::

    import torch
    from pyro_otmdr.model_space.center_gradient import CenterGradient
    from pyro_otmdr.model_space.step import ParamGroups

    theta, phi = torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)
    rows = torch.arange(6.0).reshape(3, 2)

    def evaluate(batch, label):  # a per-example mean over the batch's rows
        (y,), _ = batch
        loss = 0.5 * ((theta - y).pow(2).sum(1) + (phi - y).pow(2).sum(1)).mean()
        loss.backward()
        return loss

    whole, halves = ((rows,), {}), [((rows[:1],), {}), ((rows[1:],), {})]
    center = CenterGradient(ParamGroups([theta], [phi]), whole, mean_over_examples=lambda: True)
    evaluate(halves[0], "first ascent pass")  # at the centre
    center.after_first_ascent(halves)
    with center.frozen():  # a pass at a perturbed point: phi is a constant
        evaluate(whole, "descent pass")
    center.finish(evaluate)  # one more pass, on the second half only
    assert torch.allclose(phi.grad, phi.detach() - rows.mean(0))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

import torch

from .batching import Batch, batch_size_of
from .core import grads_of, take_grads_, zero_grads_
from .savings import StepSavings

if TYPE_CHECKING:
    from .step import MeanOverExamples, ParamGroups

__all__ = ["CenterGradient", "frozen_constants"]


class CenterGradient:
    """The centre gradient of one step for ``params.fixed``, and those parameters as constants
    in the passes that throw their gradient away.

    The step calls, in order: :meth:`frozen` around every pass of its particles,
    :meth:`after_first_ascent` after the first particle's first ascent pass,
    :meth:`after_descent` after each particle's descent pass and :meth:`finish` once at the end.
    Then ``params.fixed`` hold the whole batch's gradient at the centre in ``.grad``, and
    ``params.perturbed`` the gradients they held before :meth:`finish`.

    :param params: the step's parameters (the Pyro route fills them during the first pass: they
        are read when a hook runs).
    :param batch: the whole batch.
    :param savings: the step's savings; ``center_from_halves`` and ``frozen_constants`` apply.
    :param rank_local: whether the ascent passes run under an ascent context (DDP's
        ``no_sync``): their gradient is the rank's own, so no half is kept, and no parameter is
        frozen.
    :param mean_over_examples: asked at the end (case 2 only) whether the loss is a per-example
        mean under the plate idiom; without it, the halves are never used.
    """

    def __init__(
        self,
        params: ParamGroups,
        batch: Batch,
        *,
        savings: StepSavings | None = None,
        rank_local: bool = False,
        mean_over_examples: MeanOverExamples | None = None,
    ) -> None:
        self.params = params
        self.batch = batch
        self.savings = StepSavings() if savings is None else savings
        self.rank_local = rank_local
        self.mean_over_examples = mean_over_examples if self.savings.center_from_halves else None
        self._whole: list[torch.Tensor] | None = None  # case 1: SAM's ascent gradient
        self._halves: Sequence[Batch] = ()  # case 2: the first particle's halves ...
        self._first_half: list[torch.Tensor] | None = None  # ... and the first one's gradient

    def frozen(self, unless: bool = False) -> AbstractContextManager:
        """The context of a pass whose gradient for ``params.fixed`` is thrown away (all but the
        pass for which ``unless`` is true): :func:`frozen_constants`, with that saving and not
        under an ascent context; else nothing."""
        if unless or not self.savings.frozen_constants or self.rank_local:
            return nullcontext()
        return frozen_constants(self.params.fixed)

    def after_first_ascent(self, ascent_batches: Sequence[Batch]) -> None:
        """Set aside ``params.fixed``'s gradient of the first particle's first ascent pass.

        SAM's ascent batch is the whole batch: that is the centre gradient (case 1). OT-MDR's is
        the first of two halves: kept for :meth:`finish` to combine with the second's (case 2).
        """
        fixed = self.params.fixed
        if not fixed:
            return
        if ascent_batches[0] is self.batch:
            self._whole = take_grads_(fixed)
        elif len(ascent_batches) == 2 and not self.rank_local:
            self._halves = ascent_batches
            self._first_half = take_grads_(fixed)

    def after_descent(self) -> None:
        """Drop ``params.fixed``'s gradient at a perturbed point (left there when not frozen)."""
        zero_grads_(self.params.fixed)

    def finish(self, evaluate: Callable[[Batch, str], object], batch_stats: bool = False) -> None:
        """Leave the centre gradient in ``params.fixed``'s ``.grad``, evaluating what it lacks.

        ``evaluate(batch, label)`` runs a pass at the centre (case 2: the second half; case 3:
        the whole batch); ``params.perturbed``'s gradients are set aside around it.
        ``batch_stats``: a batch-norm layer normalised with the batch's statistics (no case 2).
        """
        fixed = self.params.fixed
        if not fixed:
            return
        if self._whole is not None:
            for p, g in zip(fixed, self._whole, strict=True):
                p.grad = g
            return
        sizes = self._half_sizes() if self._halves_suffice(batch_stats) else None
        descent = take_grads_(self.params.perturbed)
        if sizes is None:
            evaluate(self.batch, "full-batch gradient at the unperturbed parameters")
        else:
            evaluate(self._halves[1], "second half's gradient at the unperturbed point")
            first_weight, second_weight = sizes[0] / sum(sizes), sizes[1] / sum(sizes)
            second = grads_of(fixed)
            torch._foreach_mul_(second, second_weight)
            torch._foreach_add_(second, self._first_half, alpha=first_weight)
        for p, g in zip(self.params.perturbed, descent, strict=True):
            p.grad = g

    def _halves_suffice(self, batch_stats: bool) -> bool:
        """Whether the loss lets the first particle's halves give the whole batch's gradient."""
        if self._first_half is None or self.mean_over_examples is None:
            return False
        return not batch_stats and self.mean_over_examples()

    def _half_sizes(self) -> tuple[int, int] | None:
        """The sizes of the first particle's halves, if they partition the batch."""
        try:
            first, second = (batch_size_of(*half) for half in self._halves)
            whole = batch_size_of(*self.batch)
        except ValueError:  # a batch without tensor arguments
            return None
        return (first, second) if first + second == whole else None


@contextmanager
def frozen_constants(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block ``params`` do not require grad: a backward skips them and the graph
    through them (a scale's softplus, say); the other parameters' gradients are unchanged.

    Usage::

        import torch
        from pyro_otmdr.model_space.center_gradient import frozen_constants

        theta, phi = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        with frozen_constants([phi]):
            (theta * phi.exp()).sum().backward()  # no graph through phi.exp()
        assert phi.grad is None and phi.requires_grad and theta.grad is not None
    """
    frozen = [p for p in params if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
