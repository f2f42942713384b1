"""The sharpness-aware step itself, for any loss whose passes leave gradients in ``.grad``.

:class:`SharpnessAwareStep` runs OT-MDR's particles (or SAM's single move) given a function that
evaluates the loss on a batch and backpropagates. It knows nothing about Pyro: the SVI wrapper
(:class:`pyro_otmdr.OTMDR`) and the torch-optimiser route both drive it.

The algorithm, for the perturbed parameters ``theta`` and a batch ``B``: for each particle
``k = 1..K``, with ``B_1, B_2`` two random halves of ``B`` drawn afresh (SAM: one move on
``B_1 = B``, ``K = 1``, no noise)::

    theta_k^0 = theta
    theta_k^i = theta_k^(i-1) + rho_i * g_i / ||g_i|| + sigma * eps_i,   i = 1, 2   (ascent)
                with g_i = grad L_{B_i}(theta_k^(i-1)) and eps_i ~ N(0, I)
    G_k       = grad L_B(theta_k^2)                                              (descent)

and ``.grad`` ends holding ``(1/K) sum_k G_k``; the parameters are restored from a saved copy
after each particle, bit for bit. The parameters that are not perturbed (``phi``: an
AutoNormal's scales) take the whole batch's gradient at the unperturbed point,
``grad_phi L_B(theta, phi)``. Where it comes from (SAM's own ascent pass; the first particle's
two halves when the loss is a per-example mean; else one more pass on the whole batch), and
why ``phi`` are constants in every other pass, is :mod:`.center_gradient`'s business: the step
calls its :class:`~.center_gradient.CenterGradient` at four named points.

Losses stay as the passes return them (tensors on their device) until the step ends; they are
checked for NaN and infinity there, with one device synchronisation per step.

Usage::

    import torch
    from pyro_otmdr.model_space.step import ParamGroups, SharpnessAwareStep

    net = torch.nn.Linear(4, 1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def evaluate(batch, label):  # one pass: the loss, backpropagated into .grad
        (xb, yb), _ = batch
        loss = torch.nn.functional.mse_loss(net(xb), yb)
        loss.backward()
        return loss

    def halves(batch):  # OT-MDR's two ascent batches
        (xb, yb), kwargs = batch
        return [((xb[:4], yb[:4]), kwargs), ((xb[4:], yb[4:]), kwargs)]

    step = SharpnessAwareStep.otmdr(rho=0.05, n_particles=2, seed=0)
    params = ParamGroups(perturbed=list(net.parameters()))
    info = step.run(evaluate, ((x, y), {}), halves, params)
    assert len(info.losses) == 2 and net.weight.grad.shape == (1, 4)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import Batch
from .center_gradient import CenterGradient
from .core import add_gaussian_noise_, grads_of, restore_, snapshot, zero_grads_
from .geometry import Geometry
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
the two halves of the whole batch, so that its gradient is their size-weighted mean
(:mod:`.center_gradient`)."""


class NonFiniteLossError(FloatingPointError):
    """A pass of a sharpness-aware step returned a NaN or infinite loss."""


@dataclass
class ParamGroups:
    """The parameters of a step: those that are moved and those that are not.

    The torch route fills it before the step; the Pyro route during the step's first pass.
    """

    perturbed: list[torch.Tensor] = field(default_factory=list)
    fixed: list[torch.Tensor] = field(default_factory=list)
    #: the scale of each perturbed parameter, for the ``"posterior"`` geometry only
    scales: list[torch.Tensor] | None = None

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
    center: CenterGradient
    ascent_context: AscentContext | None = None
    saved: list[torch.Tensor] | None = None
    accumulated: list[torch.Tensor] | None = None
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
    :param geometry: how each ascent move spends its radius (:mod:`.geometry`: ``"global"``, the
        paper's, by default; ``"layer"``, ``"elementwise"``, ``"posterior"``).
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
        geometry: str | Geometry | None = None,
    ) -> None:
        self.geometry = Geometry.of(geometry)
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
        geometry: str | Geometry | None = None,
    ) -> SharpnessAwareStep:
        """OT-MDR's two moves, of radii ``rho`` and ``rho2`` (``2 * rho`` when omitted)."""
        check_positive("rho", rho)
        rho2 = 2.0 * rho if rho2 is None else rho2
        return cls(
            (rho, rho2),
            n_particles,
            noise_std,
            seed,
            merge_grads,
            savings=savings,
            geometry=geometry,
        )

    @classmethod
    def sam(
        cls,
        rho: float,
        *,
        savings: StepSavings | None = None,
        geometry: str | Geometry | None = None,
    ) -> SharpnessAwareStep:
        """SAM's single move of radius ``rho``: one particle, no noise."""
        return cls((rho,), n_particles=1, noise_std=0.0, seed=0, savings=savings, geometry=geometry)

    # -- the algorithm (the module docstring's): the particles, their moves, their mean ------------

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
        center = CenterGradient(
            params,
            batch,
            savings=self.savings,
            rank_local=ascent_context is not None,
            mean_over_examples=mean_over_examples,
        )
        state = _State(evaluate, batch, params, center, ascent_context)
        try:
            with RunningStatsGuard() as running_stats:
                last = [
                    self._particle(state, k, ascent_batches, running_stats)
                    for k in range(self.n_particles)
                ]
                center.finish(functools.partial(self._pass, state), running_stats.saw_batch_stats)
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
        center, halves = state.center, ascent_batches(state.batch)
        if len(halves) != len(self.radii):
            raise ValueError(f"expected {len(self.radii)} ascent batches, got {len(halves)}")
        previous = None
        for i, (half, radius) in enumerate(zip(halves, self.radii, strict=True)):
            first = k == 0 and i == 0  # at the centre: the one pass whose fixed grads are kept
            with self._ascent_context(state), center.frozen(unless=first):
                self._pass(state, half, f"particle {k + 1}, ascent step {i + 1}")
            if first:
                center.after_first_ascent(halves)
            norm, previous = self._ascend(state.params, radius, previous)
            state.ascent_norms.append(norm)
        if k == 0:
            running_stats.begin_counted()  # the step's first full-batch pass moves the statistics
        with center.frozen():
            self._pass(state, state.batch, f"particle {k + 1}, full-batch gradient")
        if k == 0:
            running_stats.end_counted()
        restore_(state.params.perturbed, state.saved)
        center.after_descent()
        self._accumulate(state, k)
        return len(state.passes) - 1

    def _ascend(
        self, params: ParamGroups, radius: float, previous: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """One ascent move; returns the gradient norm and (``merge_grads``) a copy of the grads."""
        grads = grads_of(params.perturbed)
        direction = None if previous is None else torch._foreach_add(grads, previous)
        norm = self.geometry.move_(params.perturbed, grads, radius, direction, params.scales)
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

    # -- the passes and the generators -------------------------------------------------------------

    def _pass(self, state: _State, batch: Batch, label: str) -> torch.Tensor | float:
        """One evaluation, its loss kept for the end of the step; the first one snapshots."""
        loss = state.evaluate(batch, label)
        state.passes.append((label, loss))
        if state.saved is None:
            if not state.params.perturbed:
                raise ValueError("found no parameter to perturb: check which are perturbed")
            state.saved = snapshot(state.params.perturbed)
        return loss

    @staticmethod
    def _ascent_context(state: _State) -> AbstractContextManager:
        return state.ascent_context() if state.ascent_context else nullcontext()

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


def check_positive(name: str, value: float) -> None:
    """``ValueError`` unless ``value`` is a finite number > 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
