"""OT-MDR and SAM as a drop-in ``loss=`` for an unchanged :class:`pyro.infer.SVI`.

One step, for a minibatch ``B`` and ``K`` particles (each with its own random split and noise):

1. ``theta1 = theta + rho  * g1 / ||g1|| + eps1``, ``g1 = grad L_B1(theta)`` on a random half B1;
2. ``theta2 = theta1 + rho2 * g2 / ||g2|| + eps2``, ``g2 = grad L_B2(theta1)`` on the other half;
3. ``G_k = grad L_B(theta2)`` on the whole batch; then ``theta`` is restored from a saved copy.

The parameters' ``.grad`` is left holding ``(1/K) sum_k G_k`` for the point estimates and means that
are perturbed; parameters that are not perturbed (a Gaussian guide's scales) get the gradient of the
whole batch at the unperturbed parameters: from the first particle's two halves there when the
model's likelihood is in a subsampling plate (half a pass), else from a whole-batch pass; in the
other passes they are constants, served from the first pass. The guide's reparameterisation noise
is fixed for the whole step, and a ``Trace_ELBO`` pass keeps its loss on the device. ``SVI``
then lets its optimiser step as usual.

Wrapping ``JitTrace_ELBO`` or ``JitTraceMeanField_ELBO`` compiles the passes: one graph per kind
of pass and batch shape, the step's noise and the parameters as they are its inputs, the same
losses and gradients as the uncompiled step (:mod:`.jit`).

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr import OTMDR
    from pyro_otmdr.bayes import bayesian

    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = AutoNormal(model)
    x_train, y_train = torch.randn(16, 4), torch.randint(3, (16,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
              loss=OTMDR(Trace_ELBO(), rho=0.05, n_particles=2))
    for x, y in zip(x_train.split(8), y_train.split(8)):
        loss = svi.step(x, y)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import (
    ELBO,
)

from ..bayes.wrapper import COMPILED_ELBOS, PreparesStep, WrapperELBO, check_wrappable
from .batching import Batch, BatchSplitter, batch_size_of, split_in_halves, with_rows, without_rows
from .constant_params import ConstantParams
from .device_loss import loss_and_grads_on_device
from .geometry import Geometry, scale_partner, scales_for
from .jit import CompiledPasses, compiled_elbo, differentiable_pass
from .perturbation import PerturbRule, perturbed_by_default
from .reparam_noise import FixedReparamNoise, guess_plate_nesting
from .savings import StepSavings
from .step import NonFiniteLossError, ParamGroups, SharpnessAwareStep, StepInfo
from .subsampling import PlateScaling

__all__ = [
    "DEFAULT_NOISE_STD",
    "OTMDR",
    "SAM",
    "NonFiniteLossError",
    "StepInfo",
    "check_wrappable",
    "per_example_mean",
    "prepared_batch",
]

DEFAULT_NOISE_STD = 0.0
"""Default standard deviation of the noise added after each ascent move (see the docs,
Benchmarks: Noise ablation)."""


def prepared_batch(elbo: Any, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Batch:
    """The batch as the wrapped loss prepares it once per step, before the passes.

    A wrapped loss may define ``prepare_step(model, guide, args, kwargs) -> (args, kwargs)``,
    called with the step's guide at the unperturbed parameters: the data-robust losses attack
    there, once, and return the batch carrying the adversarial inputs (as an argument with the
    batch's leading dimension, so that the halves get their rows).
    """
    if isinstance(elbo, PreparesStep):
        return elbo.prepare_step(model, guide, args, kwargs)
    return args, kwargs


def per_example_mean(elbo: Any) -> bool:
    """Whether the wrapped loss of a batch is a mean over its examples (plate idiom aside): a
    loss may say it is not (``per_example_mean = False``, ARMOR's dual couples the examples)."""
    return bool(elbo.per_example_mean) if isinstance(elbo, PreparesStep) else True


def _pyros_pass(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> float:
    """One pass as Pyro's ELBO takes it (the ``loss_on_device`` saving off)."""
    return elbo.loss_and_grads(model, guide, *args, **kwargs)


class OTMDR(WrapperELBO):
    """Wrap a Pyro ELBO so that ``SVI.step`` takes an OT-MDR step.

    :param elbo: the loss to make robust, any :class:`pyro.infer.ELBO` (``Trace_ELBO``,
        ``TraceMeanField_ELBO``, ...). Its value at a perturbed model, with the guide's
        reparameterisation noise fixed, is the ``L`` of every pass. ``JitTrace_ELBO`` and
        ``JitTraceMeanField_ELBO`` compile the passes (:mod:`pyro_otmdr.model_space.jit`; the
        graphs are in :attr:`compiled`); the other jit ELBOs are refused.
    :param rho: radius of the first ascent move (paper: 0.05 CIFAR-10, 0.1 CIFAR-100, 0.005 BNN).
    :param rho2: radius of the second ascent move; ``2 * rho`` when omitted, as in the paper.
    :param n_particles: number of particles ``K`` whose gradients are averaged (the paper's
        ablation found 2 best).
    :param noise_std: standard deviation of the Gaussian noise added after each ascent move.
    :param perturb: which parameters are moved, by param-store name; the default moves point
        estimates and means and never scales (see :mod:`pyro_otmdr.model_space.perturbation`).
    :param split_batch: ``split(args, kwargs, generator) -> (half1, half2)``; by default every
        tensor argument with the batch's leading dimension is split with a fresh permutation.
        With a custom split, parameters that are not perturbed take a whole-batch pass (the
        halves are not known to partition the batch).
    :param seed: seeds the generator of the splits and the noise; drawn from torch's global
        generator when omitted, so ``pyro.set_rng_seed`` before construction makes runs repeatable.
    :param merge_grads: reproduce the authors' code (its ``merge_grad`` flag): the second move
        goes along ``g1 + g2`` scaled by ``rho2 / ||g2||``. Off by default: the paper moves
        along ``g2``.
    :param savings: the exact savings of the step (:class:`~pyro_otmdr.model_space.StepSavings`,
        all on by default); ``StepSavings.none()`` runs every pass as the algorithm reads.
    :param geometry: how each ascent move spends its radius (see
        :mod:`pyro_otmdr.model_space.geometry`): ``"global"`` (the paper's, default), ``"layer"``
        (each tensor by ``rho`` times its own norm), ``"elementwise"`` (ASAM) or ``"posterior"``
        (a Gaussian guide's means in units of their scales).
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
        merge_grads: bool = False,
        savings: StepSavings | None = None,
        geometry: str | Geometry | None = None,
    ) -> None:
        engine = SharpnessAwareStep.otmdr(
            rho, rho2, n_particles, noise_std, seed, merge_grads, savings=savings, geometry=geometry
        )
        self._init(elbo, engine, perturb)
        self.split_batch = split_batch or split_in_halves

    accepts_jit = tuple(COMPILED_ELBOS)

    def _init(self, elbo: ELBO, engine: SharpnessAwareStep, perturb: PerturbRule | None) -> None:
        WrapperELBO.__init__(self, elbo)
        self.engine = engine
        self.perturb = perturb or perturbed_by_default
        self.last_step: StepInfo | None = None
        jit = compiled_elbo(elbo)
        self.compiled: CompiledPasses | None = None if jit is None else CompiledPasses(jit)
        """The compiled passes, for a jit ELBO (``None`` otherwise)."""

    @property
    def savings(self) -> StepSavings:
        """The exact savings the step uses."""
        return self.engine.savings

    @property
    def geometry(self) -> Geometry:
        """How each ascent move spends its radius."""
        return self.engine.geometry

    @property
    def rho(self) -> float:
        return self.engine.radii[0]

    @property
    def rho2(self) -> float | None:
        return self.engine.radii[1] if len(self.engine.radii) > 1 else None

    @property
    def n_particles(self) -> int:
        return self.engine.n_particles

    @property
    def noise_std(self) -> float:
        return self.engine.noise_std

    @property
    def generator(self) -> torch.Generator:
        """The generator of the batch splits and the noise."""
        return self.engine.generator

    # -- the Pyro ELBO interface (loss, differentiable_loss: the wrapped ELBO's) ---------------

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Take the passes of one step; leave the descent gradient in ``.grad``.

        Returns the mean over particles of the whole batch's loss at the perturbed models (the
        robust objective); for an ensemble guide, the sum of that over its members, each taking
        its own step. After any exception every parameter is restored bit for bit, running
        statistics are as before the step and the gradients are zeroed.
        """
        return self.per_member(guide, lambda: self._step(model, guide, args, kwargs))

    def _step(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> float:
        """One step for one point estimate or Gaussian guide (an ensemble member)."""
        savings = self.savings
        guess_plate_nesting(self.elbo, model, guide, args, kwargs)  # before the noise is fixed
        reparam_noise = FixedReparamNoise.for_batch(args, kwargs, savings.closed_form_logq)
        fixed_guide = reparam_noise(guide)
        # the row numbers travel with the data: a local latent's noise follows its example
        args, kwargs = with_rows(*prepared_batch(self.elbo, model, fixed_guide, args, kwargs))
        params = ParamGroups()
        # the fixed parameters' values, in passes that take no grad for them (a compiled pass
        # takes them as inputs of its graph)
        constants = ConstantParams(enabled=savings.served_constants)
        scaling: list[PlateScaling] = []
        run_pass = self._pass_runner(model, guide, fixed_guide, reparam_noise, scaling, constants)

        def evaluate(batch: Batch, label: str) -> torch.Tensor | float:
            (args, kwargs), rows = without_rows(batch)
            if not params.all:  # the first pass: capture the parameters, validate, watch plates
                scaling.append(PlateScaling(batch_size_of(args, kwargs)))
                with self._capture(params, constants), scaling[0], reparam_noise.on_rows(rows):
                    loss = run_pass(args, kwargs, first=True)
                reparam_noise.settle(scaling[0].batch_plates)  # the model names the data plate
                return loss
            # the first pass validated the inputs
            with pyro.validation_enabled(False), constants, reparam_noise.on_rows(rows):
                return run_pass(args, kwargs, first=False)

        def mean_over_examples() -> bool:
            halves = self.split_batch is split_in_halves
            return halves and scaling[0].holds and per_example_mean(self.elbo)

        info = self.engine.run(
            evaluate,
            (args, kwargs),
            self._ascent_batches,
            params,
            mean_over_examples=mean_over_examples,
        )
        info.reparam_noise = reparam_noise.noise
        self.last_step = info
        return sum(info.losses) / len(info.losses)

    def _pass_runner(
        self,
        model: Callable,
        guide: Callable,
        fixed_guide: Callable,
        reparam_noise: FixedReparamNoise,
        scaling: list[PlateScaling],
        constants: ConstantParams,
    ) -> Callable[..., torch.Tensor | float]:
        """``run(args, kwargs, first)``: one pass, backpropagated, returning its loss."""
        savings = self.savings
        if self.compiled is None:
            run_pass = loss_and_grads_on_device if savings.loss_on_device else _pyros_pass
            return lambda args, kwargs, first: run_pass(self.elbo, model, fixed_guide, args, kwargs)
        compiled, plain = self.compiled, self.uncompiled

        def pass_fn(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
            return differentiable_pass(plain, model, guide, args, kwargs)

        def run(args: tuple, kwargs: dict, first: bool) -> torch.Tensor | float:
            loss = compiled.loss(
                pass_fn,
                model,
                guide,
                args,
                kwargs,
                noise=reparam_noise,
                pass_guide=fixed_guide,
                announce=first,
                scaling=scaling[0] if first else None,
                constants=constants,
            )
            if loss.requires_grad:
                loss.backward()
            loss = loss.detach()
            return loss if savings.loss_on_device else float(loss)

        return run

    def _ascent_batches(self, batch: Batch) -> Sequence[Batch]:
        """The batches of the ascent moves of one particle: two random halves."""
        args, kwargs = batch
        return self.split_batch(args, kwargs, self.generator)

    @contextmanager
    def _capture(self, params: ParamGroups, constants: ConstantParams) -> Iterator[None]:
        with poutine.trace(param_only=True) as capture:
            yield
        perturbed_names = []
        for site in capture.trace.nodes.values():
            leaf = site["value"].unconstrained()
            if self.perturb(site["name"]):
                params.perturbed.append(leaf)
                perturbed_names.append(site["name"])
            else:
                params.fixed.append(leaf)
                constants.record(site)
        if not params.perturbed:
            names = ", ".join(capture.trace.nodes) or "none"
            raise ValueError(
                f"{type(self).__name__} found no parameter to perturb (parameters: {names}); "
                "check the perturb= rule"
            )
        if self.geometry.needs_scales:  # the posterior geometry: each mean's scale, constrained
            values = {name: site["value"] for name, site in capture.trace.nodes.items()}
            names = list(values)
            params.scales = scales_for(
                self.geometry, perturbed_names, lambda name: values.get(scale_partner(name, names))
            )

    # -- state -----------------------------------------------------------------------------------

    def own_state_dict(self) -> dict[str, Any]:
        """The generators' states, to resume a run with the same splits and noise (the wrapped
        loss's state, WDAT's running estimate say, nests under ``"elbo"`` in ``state_dict``)."""
        return self.engine.state_dict()

    def load_own_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`own_state_dict` returned."""
        self.engine.load_state_dict(state)


class SAM(OTMDR):
    """Sharpness-aware minimisation: one full-batch ascent move of radius ``rho``, no noise, one
    particle, then the gradient at the perturbed point. Runs on the same core as :class:`OTMDR`.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoDelta
        from pyro_otmdr import SAM
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        svi = SVI(model, AutoDelta(model), pyro.optim.SGD({"lr": 0.1}),
                  loss=SAM(Trace_ELBO(), rho=0.05))
        loss = svi.step(torch.randn(8, 4), torch.randint(3, (8,)))
    """

    def __init__(
        self,
        elbo: ELBO,
        *,
        rho: float,
        perturb: PerturbRule | None = None,
        savings: StepSavings | None = None,
        geometry: str | Geometry | None = None,
    ) -> None:
        self._init(elbo, SharpnessAwareStep.sam(rho, savings=savings, geometry=geometry), perturb)

    def _ascent_batches(self, batch: Batch) -> Sequence[Batch]:
        return [batch]
