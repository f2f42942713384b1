"""OT-MDR and SAM as a drop-in ``loss=`` for an unchanged :class:`pyro.infer.SVI`.

One step, for a minibatch ``B`` and ``K`` particles (each with its own random split and noise):

1. ``theta1 = theta + rho  * g1 / ||g1|| + eps1``, ``g1 = grad L_B1(theta)`` on a random half B1;
2. ``theta2 = theta1 + rho2 * g2 / ||g2|| + eps2``, ``g2 = grad L_B2(theta1)`` on the other half;
3. ``G_k = grad L_B(theta2)`` on the whole batch; then ``theta`` is restored from a saved copy.

The parameters' ``.grad`` is left holding ``(1/K) sum_k G_k`` for the point estimates and means that
are perturbed; parameters that are not perturbed (a Gaussian guide's scales) get the gradient of the
whole batch at the unperturbed parameters. The guide's reparameterisation noise is fixed for the
whole step. ``SVI`` then lets its optimiser step as usual.

Usage::

    from pyro.infer import SVI, Trace_ELBO
    from pyro_otmdr import OTMDR

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
              loss=OTMDR(Trace_ELBO(), rho=0.05, n_particles=2))
    for x, y in batches:
        loss = svi.step(x, y)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
)

from .batching import Batch, BatchSplitter, split_in_halves
from .core import add_gaussian_noise_, ascend_, restore_, snapshot
from .ensemble import is_ensemble, sum_over_members
from .perturbation import PerturbRule, perturbed_by_default
from .reparam_noise import FixedReparamNoise
from .running_stats import RunningStatsGuard

__all__ = ["DEFAULT_NOISE_STD", "OTMDR", "SAM", "NonFiniteLossError", "StepInfo"]

DEFAULT_NOISE_STD = 0.0
"""Default standard deviation of the noise added after each ascent move (see the README)."""


_JIT_ELBOS = (
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
)


class NonFiniteLossError(FloatingPointError):
    """A pass of a sharpness-aware step returned a NaN or infinite loss."""


@dataclass
class _Params:
    """The parameters of one step: those that are moved and those that are not."""

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
    :ivar reparam_noise: the guide's standard-normal noise ``kappa`` per site, fixed for the step.
    """

    losses: list[float]
    ascent_norms: list[torch.Tensor]
    reparam_noise: dict[str, torch.Tensor]


@dataclass
class _Step:
    """What one step's passes share."""

    model: Callable
    guide: Callable
    batch: Batch
    params: _Params = field(default_factory=_Params)
    saved: list[torch.Tensor] | None = None
    accumulated: list[torch.Tensor] | None = None
    center_grads: list[torch.Tensor] | None = None
    ascent_norms: list[torch.Tensor] = field(default_factory=list)


class OTMDR(ELBO):
    """Wrap a Pyro ELBO so that ``SVI.step`` takes an OT-MDR step.

    :param elbo: the loss to make robust, any :class:`pyro.infer.ELBO` (``Trace_ELBO``,
        ``TraceMeanField_ELBO``, ...). Its value at a perturbed model, with the guide's
        reparameterisation noise fixed, is the ``L`` of every pass.
    :param rho: radius of the first ascent move (paper: 0.05 CIFAR-10, 0.1 CIFAR-100, 0.005 BNN).
    :param rho2: radius of the second ascent move; ``2 * rho`` when omitted, as in the paper.
    :param n_particles: number of particles ``K`` whose gradients are averaged (the paper's
        ablation found 2 best).
    :param noise_std: standard deviation of the Gaussian noise added after each ascent move.
    :param perturb: which parameters are moved, by param-store name; the default moves point
        estimates and means and never scales (see :mod:`pyro_otmdr.perturbation`).
    :param split_batch: ``split(args, kwargs, generator) -> (half1, half2)``; by default every
        tensor argument with the batch's leading dimension is split with a fresh permutation.
    :param seed: seeds the generator of the splits and the noise; drawn from torch's global
        generator when omitted, so ``pyro.set_rng_seed`` before construction makes runs repeatable.
    """

    def __init__(
        self,
        elbo: ELBO,
        *,
        rho: float,
        rho2: float | None = None,
        n_particles: int = 1,
        noise_std: float = DEFAULT_NOISE_STD,
        perturb: PerturbRule | None = None,
        split_batch: BatchSplitter | None = None,
        seed: int | None = None,
    ) -> None:
        rho2 = 2.0 * rho if rho2 is None else rho2
        _check_positive("rho", rho)
        _check_positive("rho2", rho2)
        self._init_core(
            elbo, radii=(rho, rho2), n_particles=n_particles, noise_std=noise_std, seed=seed
        )
        self.perturb = perturb or perturbed_by_default
        self.split_batch = split_batch or split_in_halves

    def _init_core(
        self,
        elbo: ELBO,
        *,
        radii: tuple[float, ...],
        n_particles: int,
        noise_std: float,
        seed: int | None,
    ) -> None:
        if not isinstance(elbo, ELBO):
            raise TypeError(
                f"expected a pyro.infer.ELBO to wrap (e.g. Trace_ELBO()), got {type(elbo).__name__}"
            )
        if isinstance(elbo, _JIT_ELBOS):
            raise TypeError(
                f"{type(elbo).__name__} compiles the loss once for one batch shape and bakes the "
                "guide's noise into the compiled graph, but a sharpness-aware step evaluates it on "
                "half batches and the whole batch with noise fixed per step: wrap the non-jit "
                f"version ({type(elbo).__name__.removeprefix('Jit')}) instead"
            )
        if isinstance(n_particles, bool) or not isinstance(n_particles, int) or n_particles < 1:
            raise ValueError(f"n_particles must be an integer >= 1, got {n_particles!r}")
        if not (isinstance(noise_std, int | float) and math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        super().__init__()
        self.elbo = elbo
        self.radii = radii
        self.n_particles = n_particles
        self.noise_std = float(noise_std)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self.last_step: StepInfo | None = None

    @property
    def rho(self) -> float:
        return self.radii[0]

    @property
    def rho2(self) -> float | None:
        return self.radii[1] if len(self.radii) > 1 else None

    # -- the Pyro ELBO interface ---------------------------------------------------------------

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The wrapped ELBO's loss at the current (unperturbed) parameters."""
        return self.elbo.loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """The wrapped ELBO's differentiable loss at the current parameters."""
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        return self.elbo._get_trace(model, guide, args, kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Take the passes of one step; leave the descent gradient in ``.grad``.

        Returns the mean over particles of the whole batch's loss at the perturbed models (the
        robust objective); for an ensemble guide, the sum of that over its members, each taking
        its own step. After any exception every parameter is restored bit for bit, running
        statistics are as before the step and the gradients are zeroed.
        """
        if is_ensemble(guide):
            return sum_over_members(guide, lambda: self._step(model, guide, args, kwargs))
        return self._step(model, guide, args, kwargs)

    def _step(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> float:
        """One step for one point estimate or Gaussian guide (an ensemble member)."""
        reparam_noise = FixedReparamNoise()
        step = _Step(model, reparam_noise(guide), (args, kwargs))
        try:
            with RunningStatsGuard() as running_stats:
                losses = [self._particle(step, k, running_stats) for k in range(self.n_particles)]
                if step.params.fixed:
                    self._gradient_at_center(step)
        except BaseException:
            zero_grads_(step.params.all)
            raise
        finally:
            if step.saved is not None:
                restore_(step.params.perturbed, step.saved)
        self.last_step = StepInfo(losses, step.ascent_norms, reparam_noise.noise)
        return sum(losses) / len(losses)

    # -- passes ----------------------------------------------------------------------------------

    def _ascent_batches(self, batch: Batch) -> Sequence[Batch]:
        """The batches of the ascent moves of one particle: two random halves."""
        args, kwargs = batch
        return self.split_batch(args, kwargs, self.generator)

    def _particle(self, step: _Step, k: int, running_stats: RunningStatsGuard) -> float:
        """Move particle ``k`` by the ascent steps, add its gradient, restore; return its loss."""
        for i, (half, radius) in enumerate(
            zip(self._ascent_batches(step.batch), self.radii, strict=True)
        ):
            self._pass(step, half, f"particle {k + 1}, ascent step {i + 1}")
            if half is step.batch and step.center_grads is None:  # SAM: whole batch, unperturbed
                step.center_grads = [g.clone() for g in grads_of(step.params.fixed)]
            step.ascent_norms.append(self._ascend(step.params, radius))
        if k == 0:
            running_stats.begin_counted()  # the step's first full-batch pass moves the statistics
        loss = self._pass(step, step.batch, f"particle {k + 1}, full-batch gradient")
        if k == 0:
            running_stats.end_counted()
        restore_(step.params.perturbed, step.saved)
        zero_grads_(step.params.fixed)
        self._accumulate(step, k)
        return loss

    def _pass(self, step: _Step, batch: Batch, label: str) -> float:
        """One evaluation of the wrapped ELBO with backward; the first one captures the params."""
        args, kwargs = batch
        if step.saved is None:
            with self._capture(step.params):
                loss = self.elbo.loss_and_grads(step.model, step.guide, *args, **kwargs)
            step.saved = snapshot(step.params.perturbed)
        else:  # the first pass has validated the inputs; later ones see subsets of them
            with pyro.validation_enabled(False):
                loss = self.elbo.loss_and_grads(step.model, step.guide, *args, **kwargs)
        loss = float(loss)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"{type(self).__name__} {label}: the loss is {loss}; the parameters were restored "
                "to their values before the step (skip this batch, or lower the learning rate/rho)"
            )
        return loss

    @contextmanager
    def _capture(self, params: _Params) -> Iterator[None]:
        with poutine.trace(param_only=True) as capture:
            yield
        for site in capture.trace.nodes.values():
            leaf = site["value"].unconstrained()
            (params.perturbed if self.perturb(site["name"]) else params.fixed).append(leaf)
        if not params.perturbed:
            names = ", ".join(capture.trace.nodes) or "none"
            raise ValueError(
                f"{type(self).__name__} found no parameter to perturb (parameters: {names}); "
                "check the perturb= rule"
            )

    def _ascend(self, params: _Params, radius: float) -> torch.Tensor:
        grads = grads_of(params.perturbed)
        norm = ascend_(params.perturbed, grads, radius)
        add_gaussian_noise_(params.perturbed, self.noise_std, self._generator_for(grads[0]))
        zero_grads_(params.all)
        return norm

    def _accumulate(self, step: _Step, k: int) -> None:
        """Keep the sum of particle gradients aside; leave their mean in ``.grad`` at the end."""
        grads = grads_of(step.params.perturbed)
        if k < self.n_particles - 1:
            if step.accumulated is None:
                step.accumulated = [g.clone() for g in grads]
            else:
                torch._foreach_add_(step.accumulated, grads)
            zero_grads_(step.params.perturbed)
        elif step.accumulated is not None:
            torch._foreach_add_(grads, step.accumulated)
            torch._foreach_div_(grads, float(self.n_particles))

    def _gradient_at_center(self, step: _Step) -> None:
        """The whole batch's gradient at the unperturbed parameters, for those not perturbed."""
        if step.center_grads is not None:
            for p, g in zip(step.params.fixed, step.center_grads, strict=True):
                p.grad = g
            return
        descent = [p.grad for p in step.params.perturbed]
        for p in step.params.perturbed:
            p.grad = None
        self._pass(step, step.batch, "full-batch gradient at the unperturbed parameters")
        for p, g in zip(step.params.perturbed, descent, strict=True):
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

    # -- state -----------------------------------------------------------------------------------

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


class SAM(OTMDR):
    """Sharpness-aware minimisation: one full-batch ascent move of radius ``rho``, no noise, one
    particle, then the gradient at the perturbed point. Runs on the same core as :class:`OTMDR`.

    Usage::

        svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.1}), loss=SAM(Trace_ELBO(), rho=0.05))
    """

    def __init__(self, elbo: ELBO, *, rho: float, perturb: PerturbRule | None = None) -> None:
        _check_positive("rho", rho)
        self._init_core(elbo, radii=(rho,), n_particles=1, noise_std=0.0, seed=0)
        self.perturb = perturb or perturbed_by_default

    def _ascent_batches(self, batch: Batch) -> Sequence[Batch]:
        return [batch]


def grads_of(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter, a zero tensor where a pass left none."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    return grads


def zero_grads_(params: Sequence[torch.Tensor]) -> None:
    """Zero the existing ``.grad`` of ``params`` in place."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
