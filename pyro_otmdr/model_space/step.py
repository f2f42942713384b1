"""The sharpness-aware step itself, for any loss whose passes leave gradients in ``.grad``.

:class:`SharpnessAwareStep` runs OT-MDR's particles (or SAM's single move) given a function that
evaluates the loss on a batch and backpropagates. It knows nothing about Pyro: the SVI wrapper
(:class:`pyro_otmdr.OTMDR`) and the torch-optimiser route both drive it.

For each particle k: each ascent batch (two random halves for OT-MDR, the whole batch for SAM)
is evaluated at the current point and the perturbed parameters move by
``radius * g / ||g||`` plus optional Gaussian noise; then the whole batch is evaluated and its
gradient kept; then the parameters are restored from the saved copy. ``.grad`` ends holding the
mean of the particle gradients for the perturbed parameters, and the whole batch's gradient at
the unperturbed point for the others. That last gradient comes, in order of preference, from
SAM's own ascent pass on the whole batch; from the first particle's two halves at the
unperturbed point when the front end says the loss is a per-example mean (Pyro's plate idiom:
the first half is already there, the second half costs half a pass); else from one more pass on
the whole batch. In every other pass (those at a perturbed point, and a later particle's first)
that gradient would be thrown away, so those parameters are constants there (``requires_grad``
off for the pass).

Losses stay as the passes return them (tensors on their device) until the step ends; they are
checked for NaN and infinity there, with one device synchronisation per step.

Usage::

    step = SharpnessAwareStep(radii=(0.05, 0.1), n_particles=2, noise_std=0.0, seed=0)
    params = ParamGroups(perturbed=list(net.parameters()))
    info = step.run(evaluate, (args, kwargs), split_into_halves, params)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import Batch, batch_size_of
from .core import add_gaussian_noise_, ascend_, restore_, snapshot
from .running_stats import RunningStatsGuard
from .savings import StepSavings

__all__ = [
    "MeanOverExamples",
    "NonFiniteLossError",
    "ParamGroups",
    "SharpnessAwareStep",
    "StepInfo",
    "StepSavings",
    "finite_losses",
]

Evaluate = Callable[[Batch, str], "torch.Tensor | float"]
"""``evaluate(batch, label) -> loss``: one pass that backpropagates into ``.grad``; the loss may
stay a tensor on its device (it is checked once, when the step ends)."""

AscentContext = Callable[[], AbstractContextManager]
"""``ascent_context()``: entered around each ascent pass (e.g. DDP's ``no_sync``)."""

MeanOverExamples = Callable[[], bool]
"""``mean_over_examples()``: asked after the first pass, whether each pass's loss is
``G(theta) + c / |b| * sum_{i in b} l_i(theta)`` (the plate idiom) and the ascent batches are
the two halves of the whole batch, so that its gradient is their size-weighted mean."""


class NonFiniteLossError(FloatingPointError):
    """A pass of a sharpness-aware step returned a NaN or infinite loss."""


@dataclass
class ParamGroups:
    """The parameters of a step: those that are moved and those that are not.

    The torch route fills it before the step; the Pyro route during the step's first pass.
    """

    perturbed: list[torch.Tensor] = field(default_factory=list)
    fixed: list[torch.Tensor] = field(default_factory=list)

    @property
    def all(self) -> list[torch.Tensor]:
        return self.perturbed + self.fixed


@dataclass
class StepInfo:
    """What the last step saw, for monitoring and tests (tensors stay on their device).

    :ivar losses: the whole batch's loss at each particle's perturbed parameters.
    :ivar ascent_norms: the global gradient norm of each ascent move, particle by particle.
    :ivar reparam_noise: a Pyro guide's standard-normal noise per site, fixed for the step.
    """

    losses: list[float]
    ascent_norms: list[torch.Tensor]
    reparam_noise: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _State:
    """What the passes of one step share."""

    evaluate: Evaluate
    batch: Batch
    params: ParamGroups
    ascent_context: AscentContext | None = None
    saved: list[torch.Tensor] | None = None
    accumulated: list[torch.Tensor] | None = None
    center_grads: list[torch.Tensor] | None = None
    halves: Sequence[Batch] = ()
    first_half_grads: list[torch.Tensor] | None = None
    ascent_norms: list[torch.Tensor] = field(default_factory=list)
    passes: list[tuple[str, torch.Tensor | float]] = field(default_factory=list)


class SharpnessAwareStep:
    """The algorithm of one OT-MDR (or SAM) step, with its own seeded generators.

    :param radii: the radius of each ascent move (OT-MDR: ``(rho, rho2)``; SAM: ``(rho,)``).
    :param n_particles: the number of particles whose gradients are averaged.
    :param noise_std: standard deviation of the Gaussian noise added after each ascent move.
    :param seed: seeds the generator of the splits and the noise; drawn from torch's global
        generator when omitted.
    :param merge_grads: move each ascent step after the first along the sum of this and the
        previous ascent gradient, scaled by this gradient's norm: the ``merge_grad`` flag of the
        authors' code, not the paper's algorithm.
    :param savings: the exact savings the step uses (:class:`StepSavings`; all by default).
    """

    def __init__(
        self,
        radii: Sequence[float],
        n_particles: int = 1,
        noise_std: float = 0.0,
        seed: int | None = None,
        merge_grads: bool = False,
        *,
        savings: StepSavings | None = None,
    ) -> None:
        for i, radius in enumerate(radii):
            check_positive("rho" if i == 0 else f"rho{i + 1}", radius)
        if isinstance(n_particles, bool) or not isinstance(n_particles, int) or n_particles < 1:
            raise ValueError(f"n_particles must be an integer >= 1, got {n_particles!r}")
        if not (isinstance(noise_std, int | float) and math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        self.radii = tuple(float(r) for r in radii)
        self.n_particles = n_particles
        self.noise_std = float(noise_std)
        self.merge_grads = bool(merge_grads)
        self.savings = StepSavings() if savings is None else savings
        if not isinstance(self.savings, StepSavings):
            raise TypeError(f"savings must be a StepSavings, got {type(savings).__name__}")
        self.generator = torch.Generator()
        self.generator.manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
        self._device_generators: dict[torch.device, torch.Generator] = {}

    @classmethod
    def otmdr(
        cls,
        rho: float,
        rho2: float | None = None,
        n_particles: int = 1,
        noise_std: float = 0.0,
        seed: int | None = None,
        merge_grads: bool = False,
        *,
        savings: StepSavings | None = None,
    ) -> SharpnessAwareStep:
        """OT-MDR's two moves, of radii ``rho`` and ``rho2`` (``2 * rho`` when omitted)."""
        check_positive("rho", rho)
        rho2 = 2.0 * rho if rho2 is None else rho2
        return cls((rho, rho2), n_particles, noise_std, seed, merge_grads, savings=savings)

    @classmethod
    def sam(cls, rho: float, *, savings: StepSavings | None = None) -> SharpnessAwareStep:
        """SAM's single move of radius ``rho``: one particle, no noise."""
        return cls((rho,), n_particles=1, noise_std=0.0, seed=0, savings=savings)

    def run(
        self,
        evaluate: Evaluate,
        batch: Batch,
        ascent_batches: Callable[[Batch], Sequence[Batch]],
        params: ParamGroups,
        *,
        ascent_context: AscentContext | None = None,
        mean_over_examples: MeanOverExamples | None = None,
    ) -> StepInfo:
        """Take one step; leave the descent gradient in ``.grad`` and return what it saw.

        ``ascent_batches(batch)`` gives one batch per radius, drawn afresh for every particle;
        an ascent batch that *is* ``batch`` (SAM) also yields the unperturbed parameters'
        gradient. After any exception the parameters are restored bit for bit, normalisation
        statistics are as before the step and the gradients are zeroed.

        ``ascent_context()``, when given, is entered around each ascent pass (forward and
        backward): DDP's ``no_sync`` there makes every rank perturb with its local gradient.
        ``mean_over_examples()``, when given and true after the first pass, lets the
        parameters that are not perturbed take the whole batch's gradient at the unperturbed
        point from the first particle's two halves (half a pass instead of a whole one).
        """
        state = _State(evaluate, batch, params, ascent_context)
        if not self.savings.center_from_halves:
            mean_over_examples = None
        try:
            with RunningStatsGuard() as running_stats:
                last = [
                    self._particle(state, k, ascent_batches, running_stats)
                    for k in range(self.n_particles)
                ]
                if params.fixed:
                    self._gradient_at_center(
                        state, self._halves_suffice(state, running_stats, mean_over_examples)
                    )
            values = finite_losses(state.passes)
        except BaseException as error:
            zero_grads_(params.all)
            if isinstance(error, Exception) and not isinstance(error, NonFiniteLossError):
                finite_losses(state.passes, cause=error)  # an earlier NaN explains the error
            raise
        finally:
            if state.saved is not None:
                restore_(params.perturbed, state.saved)
        return StepInfo([values[i] for i in last], state.ascent_norms)

    def _particle(
        self,
        state: _State,
        k: int,
        ascent_batches: Callable[[Batch], Sequence[Batch]],
        running_stats: RunningStatsGuard,
    ) -> int:
        """Move particle ``k``, add its gradient, restore; return the index of its last pass."""
        halves = ascent_batches(state.batch)
        if len(halves) != len(self.radii):
            raise ValueError(f"expected {len(self.radii)} ascent batches, got {len(halves)}")
        previous = None
        for i, (half, radius) in enumerate(zip(halves, self.radii, strict=True)):
            keeps_center = k == 0 and i == 0  # the one ascent pass whose fixed grads are kept
            with (
                state.ascent_context() if state.ascent_context else nullcontext(),
                nullcontext() if keeps_center else self._fixed_as_constants(state),
            ):
                self._pass(state, half, f"particle {k + 1}, ascent step {i + 1}")
            if state.params.fixed and keeps_center:
                self._keep_center_grads(state, halves)
            norm, previous = self._ascend(state.params, radius, previous)
            state.ascent_norms.append(norm)
        if k == 0:
            running_stats.begin_counted()  # the step's first full-batch pass moves the statistics
        with self._fixed_as_constants(state):
            self._pass(state, state.batch, f"particle {k + 1}, full-batch gradient")
        if k == 0:
            running_stats.end_counted()
        restore_(state.params.perturbed, state.saved)
        zero_grads_(state.params.fixed)
        self._accumulate(state, k)
        return len(state.passes) - 1

    def _fixed_as_constants(self, state: _State) -> AbstractContextManager:
        """:func:`fixed_as_constants` when the step uses that saving."""
        return fixed_as_constants(state) if self.savings.frozen_constants else nullcontext()

    def _keep_center_grads(self, state: _State, halves: Sequence[Batch]) -> None:
        """Set aside the unperturbed gradient of the parameters that are not perturbed.

        SAM's ascent batch is the whole batch: that is the gradient needed. OT-MDR's is the
        first half: kept for :meth:`_gradient_at_center` to combine with the second half's.
        """
        if halves[0] is state.batch:
            state.center_grads = take_grads_(state.params.fixed)
        elif len(halves) == 2 and state.ascent_context is None:  # not a rank-local gradient
            state.halves = halves
            state.first_half_grads = take_grads_(state.params.fixed)

    @staticmethod
    def _halves_suffice(
        state: _State, running_stats: RunningStatsGuard, mean_over_examples: MeanOverExamples | None
    ) -> bool:
        """Whether the first particle's halves give the whole batch's gradient at the center."""
        if state.first_half_grads is None or mean_over_examples is None:
            return False
        return not running_stats.saw_batch_stats and mean_over_examples()

    def _pass(self, state: _State, batch: Batch, label: str) -> torch.Tensor | float:
        loss = state.evaluate(batch, label)
        state.passes.append((label, loss))
        if state.saved is None:
            if not state.params.perturbed:
                raise ValueError("found no parameter to perturb: check which are perturbed")
            state.saved = snapshot(state.params.perturbed)
        return loss

    def _ascend(
        self, params: ParamGroups, radius: float, previous: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """One ascent move; returns the gradient norm and (``merge_grads``) a copy of the grads."""
        grads = grads_of(params.perturbed)
        direction = None if previous is None else torch._foreach_add(grads, previous)
        norm = ascend_(params.perturbed, grads, radius, direction)
        kept = [g.clone() for g in grads] if self.merge_grads else None
        add_gaussian_noise_(params.perturbed, self.noise_std, self._generator_for(grads[0]))
        zero_grads_(params.all)
        return norm, kept

    def _accumulate(self, state: _State, k: int) -> None:
        """Keep the sum of particle gradients aside; leave their mean in ``.grad`` at the end."""
        grads = grads_of(state.params.perturbed)
        if k < self.n_particles - 1:
            if state.accumulated is None:
                state.accumulated = [g.clone() for g in grads]
            else:
                torch._foreach_add_(state.accumulated, grads)
            zero_grads_(state.params.perturbed)
        elif state.accumulated is not None:
            torch._foreach_add_(grads, state.accumulated)
            torch._foreach_div_(grads, float(self.n_particles))

    def _gradient_at_center(self, state: _State, from_halves: bool) -> None:
        """The whole batch's gradient at the unperturbed parameters, for those not perturbed.

        SAM kept it from its ascent pass. Otherwise, when the loss is a per-example mean and
        the first particle's halves partition the batch, it is ``(|B1| g_B1 + |B2| g_B2) / |B|``
        with both halves at the unperturbed point: only the second half is evaluated. Else the
        whole batch is.
        """
        fixed = state.params.fixed
        if state.center_grads is not None:
            for p, g in zip(fixed, state.center_grads, strict=True):
                p.grad = g
            return
        sizes = _half_sizes(state) if from_halves else None
        descent = take_grads_(state.params.perturbed)
        if sizes is None:
            self._pass(state, state.batch, "full-batch gradient at the unperturbed parameters")
        else:
            self._pass(state, state.halves[1], "second half's gradient at the unperturbed point")
            first_weight, second_weight = sizes[0] / sum(sizes), sizes[1] / sum(sizes)
            second = grads_of(fixed)
            torch._foreach_mul_(second, second_weight)
            torch._foreach_add_(second, state.first_half_grads, alpha=first_weight)
        for p, g in zip(state.params.perturbed, descent, strict=True):
            p.grad = g

    def _generator_for(self, like: torch.Tensor) -> torch.Generator:
        if like.device.type == "cpu":
            return self.generator
        gen = self._device_generators.get(like.device)
        if gen is None:
            gen = torch.Generator(device=like.device)
            gen.manual_seed(int(torch.randint(2**62, (), generator=self.generator)))
            self._device_generators[like.device] = gen
        return gen

    def state_dict(self) -> dict[str, Any]:
        """The generators' states, to resume a run with the same splits and noise."""
        return {
            "generator": self.generator.get_state(),
            "device_generators": {
                str(d): g.get_state() for d, g in self._device_generators.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.generator.set_state(state["generator"])
        self._device_generators = {}
        for device, gen_state in state["device_generators"].items():
            gen = torch.Generator(device=device)
            gen.set_state(gen_state)
            self._device_generators[torch.device(device)] = gen


def grads_of(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter, a zero tensor where a pass left none."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    return grads


def take_grads_(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter (zeros where a pass left none), detached from it: the
    parameters' ``.grad`` become ``None``, so the next pass writes fresh ones (no copy)."""
    grads = grads_of(params)
    for p in params:
        p.grad = None
    return grads


def finite_losses(
    passes: Sequence[tuple[str, torch.Tensor | float]], cause: BaseException | None = None
) -> list[float]:
    """The passes' losses as floats, with one device synchronisation for all of them.

    :raises NonFiniteLossError: naming the first pass whose loss is NaN or infinite (chained to
        ``cause``, the error that a later pass raised, when given).
    """
    values = _as_floats([loss for _, loss in passes])
    for (label, _), value in zip(passes, values, strict=True):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{label}: the loss is {value}; the parameters were restored to their values "
                "before the step (skip this batch, or lower the learning rate or rho)"
            ) from cause
    return values


def _as_floats(losses: Sequence[torch.Tensor | float]) -> list[float]:
    tensors = [loss.detach().reshape(()) for loss in losses if isinstance(loss, torch.Tensor)]
    stacked = iter(())
    if tensors:
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        device = tensors[0].device
        stacked = iter(torch.stack([t.to(device, dtype) for t in tensors]).tolist())
    return [next(stacked) if isinstance(loss, torch.Tensor) else float(loss) for loss in losses]


@contextmanager
def fixed_as_constants(state: _State) -> Iterator[None]:
    """Within a pass whose gradient for the parameters that are not perturbed is thrown away
    (at a perturbed point, or a later particle's first), those parameters do not require grad:
    the backward pass skips them and the graph through them (a scale's softplus, say). The
    perturbed parameters' gradient is unchanged. Not under an ``ascent_context`` (DDP expects
    every parameter's grad).
    """
    if state.ascent_context is not None:
        yield
        return
    frozen = [p for p in state.params.fixed if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _half_sizes(state: _State) -> tuple[int, int] | None:
    """The sizes of the first particle's halves, if they were kept and partition the batch."""
    if state.first_half_grads is None:
        return None
    try:
        first, second = (batch_size_of(*half) for half in state.halves)
        whole = batch_size_of(*state.batch)
    except ValueError:  # a batch without tensor arguments
        return None
    return (first, second) if first + second == whole else None


def zero_grads_(params: Sequence[torch.Tensor]) -> None:
    """Zero the existing ``.grad`` of ``params`` in place."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


def check_positive(name: str, value: float) -> None:
    """``ValueError`` unless ``value`` is a finite number > 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
