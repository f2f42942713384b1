"""OT-MDR and SAM as torch optimisers, for ``nn.Module`` training and Pyro's ``ELBOModule``.

The second route into the same step engine as :class:`pyro_otmdr.OTMDR` (no second copy of the
step): :class:`OTMDROptimizer` wraps a base torch optimiser, splits each minibatch with its own
seeded generator, runs :class:`~pyro_otmdr.model_space.step.SharpnessAwareStep` with a closure
that computes the loss on a given (half) batch, then lets the base optimiser step. It shares
``param_groups`` and ``state`` with the base optimiser, so ``torch.optim.lr_scheduler`` works on
either.

The closure takes the batch's arguments and returns a scalar loss tensor; the optimiser does the
backward. For Pyro, ``Trace_ELBO()(model, guide)`` (an ``ELBOModule``, with
``pyro.settings.set(module_local_params=True)``) is such a closure; the guide's
reparameterisation noise is fixed for the whole step, as in the SVI route, and an
``AutoNormal``'s scales are not moved (``perturb`` works on ``named_parameters()`` names such as
``guide.scales.w_unconstrained``). Such a closure with a ``Trace_ELBO`` (and no hooks of its own)
computes its loss without a float conversion per site (no GPU synchronisation per site); with a
``JitTrace_ELBO`` or ``JitTraceMeanField_ELBO`` its passes are compiled, as in the SVI route
(:mod:`.jit`; the graphs are in :attr:`OTMDROptimizer.compiled`).

Usage::

    import pyro
    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr import OTMDROptimizer
    from pyro_otmdr.bayes import bayesian

    pyro.settings.set(module_local_params=True)            # before building the model and guide
    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = AutoNormal(model)
    x_train, y_train = torch.randn(16, 4), torch.randint(3, (16,))
    loss_fn = Trace_ELBO()(model, guide)
    loss_fn(x_train[:2], y_train[:2])                      # let the autoguide build its parameters
    base = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
    opt = OTMDROptimizer(loss_fn.named_parameters(), base, rho=0.05, n_particles=2, seed=0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=100)
    for x, y in zip(x_train.split(8), y_train.split(8)):
        loss = opt.step(loss_fn, x, y)                     # one OT-MDR step on (x, y)
    scheduler.step()
    pyro.settings.set(module_local_params=False)           # back to the global param store
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer.elbo import ELBOModule
from torch import nn

from ..bayes.wrapper import uncompiled
from .batching import Batch, BatchSplitter, batch_size_of, split_in_halves, with_rows, without_rows
from .core import global_norm
from .device_loss import differentiable_loss_on_device
from .elbo import DEFAULT_NOISE_STD, per_example_mean, prepared_batch
from .geometry import Geometry, scale_partner, scales_for
from .jit import CompiledPasses, JitTraceError, compiled_elbo, differentiable_pass
from .perturbation import PerturbRule, perturbed_by_default
from .reparam_noise import FixedReparamNoise, guess_plate_nesting
from .savings import StepSavings
from .step import ParamGroups, SharpnessAwareStep, StepInfo, grads_of
from .subsampling import PlateScaling

__all__ = ["LossClosure", "OTMDROptimizer", "SAMOptimizer"]

LossClosure = Callable[..., torch.Tensor]
"""``closure(*args, **kwargs) -> loss``: the scalar loss on the batch given by the arguments."""

ParamsLike = nn.Module | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


class _GradientOverflow(Exception):
    """A scaled fp16 backward produced an infinite or NaN gradient: skip the step."""


@dataclass
class _Progress:
    """Mutable state kept by reference, so wrappers that copy ``__dict__`` (Lightning) share it."""

    pending_loss: float | None = None
    last_step: StepInfo | None = None
    skipped_steps: int = 0
    compiled: dict[int, tuple[Any, CompiledPasses]] = field(default_factory=dict)


class OTMDROptimizer(torch.optim.Optimizer):
    """Take OT-MDR steps for a torch module, then let a base torch optimiser update it.

    :param params: the parameters to train, named (``module.named_parameters()``, or the module
        itself) so that ``perturb`` can choose by name, or plain tensors (all perturbed). They
        must be among the base optimiser's parameters; base-optimiser parameters not listed
        here are not perturbed and take the whole batch's gradient at the unperturbed point.
    :param base_optimizer: the torch optimiser that applies the descent gradient (SGD, Adam...).
        LR schedulers may drive it or this optimiser: both share ``param_groups``.
    :param rho: radius of the first ascent move.
    :param rho2: radius of the second ascent move; ``2 * rho`` when omitted.
    :param n_particles: number of particles whose gradients are averaged.
    :param noise_std: standard deviation of the Gaussian noise after each ascent move.
    :param perturb: ``perturb(name) -> bool``, which named parameters move; the default moves
        everything but the scales of Pyro's Gaussian autoguides.
    :param split_batch: ``split(args, kwargs, generator) -> (half1, half2)``; default
        :func:`~pyro_otmdr.model_space.batching.split_in_halves`.
    :param seed: seeds the generator of the splits and the noise.
    :param no_sync: DDP's ``model.no_sync``: the ascent passes run inside it, so each rank
        perturbs with its local gradient and only the descent gradient is all-reduced.
    :param grad_scaler: a ``torch.amp.GradScaler`` for fp16 autocast: every backward is scaled,
        a step whose gradients overflow is skipped (``step`` returns ``None``) and the scale
        backs off; otherwise the descent gradient is unscaled once before the base step.
    :param savings: the exact savings of the step (:class:`~pyro_otmdr.model_space.StepSavings`,
        all on by default).
    :param geometry: how each ascent move spends its radius
        (:mod:`pyro_otmdr.model_space.geometry`); ``"posterior"`` needs ``params`` to be the
        module itself (an ``ELBOModule`` of a Gaussian guide), whose constraints give the scales.
    """

    def __init__(
        self,
        params: ParamsLike,
        base_optimizer: torch.optim.Optimizer,
        *,
        rho: float,
        rho2: float | None = None,
        n_particles: int = 1,
        noise_std: float = DEFAULT_NOISE_STD,
        perturb: PerturbRule | None = None,
        split_batch: BatchSplitter | None = None,
        seed: int | None = None,
        no_sync: Callable[[], AbstractContextManager] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        savings: StepSavings | None = None,
        geometry: str | Geometry | None = None,
    ) -> None:
        engine = SharpnessAwareStep.otmdr(
            rho, rho2, n_particles, noise_std, seed, savings=savings, geometry=geometry
        )
        self._init(params, base_optimizer, engine, perturb, no_sync, grad_scaler)
        self.split_batch = split_batch or split_in_halves

    def _init(
        self,
        params: ParamsLike,
        base_optimizer: torch.optim.Optimizer,
        engine: SharpnessAwareStep,
        perturb: PerturbRule | None,
        no_sync: Callable[[], AbstractContextManager] | None,
        grad_scaler: torch.amp.GradScaler | None,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(
                "base_optimizer must be a torch.optim.Optimizer instance built on the same "
                f"parameters (e.g. torch.optim.SGD(model.parameters(), lr=0.1)), got "
                f"{type(base_optimizer).__name__}"
            )
        if isinstance(base_optimizer, OTMDROptimizer):
            raise TypeError("base_optimizer is already sharpness-aware: wrap a plain optimiser")
        if no_sync is not None and not callable(no_sync):
            raise TypeError("no_sync must be a callable such as ddp_model.no_sync")
        named = _named(params)
        perturb = perturb or perturbed_by_default
        perturbed = [p for name, p in named if perturb(name)]
        if not perturbed:
            names = ", ".join(name for name, _ in named) or "none"
            raise ValueError(f"no parameter to perturb among ({names}): check the perturb= rule")
        base_params = [p for group in base_optimizer.param_groups for p in group["params"]]
        missing = [name for name, p in named if not any(p is q for q in base_params)]
        if missing:
            raise ValueError(
                f"parameters {missing[:5]} are not in the base optimiser: build it on the same "
                "parameters (base_optimizer = torch.optim.SGD(model.parameters(), ...))"
            )
        super().__init__([p for _, p in named], dict(base_optimizer.defaults))
        self.param_groups = base_optimizer.param_groups  # one list: schedulers drive both
        self.state = base_optimizer.state
        self.base_optimizer = base_optimizer
        self.engine = engine
        self._perturbed = perturbed
        self._fixed = [p for p in base_params if not any(p is q for q in perturbed)]
        self._scales = _scale_sources(params, named, perturb, engine.geometry)
        self._no_sync = no_sync
        self.grad_scaler = grad_scaler
        self._progress = _Progress()

    # -- monitoring --------------------------------------------------------------------------------

    @property
    def generator(self) -> torch.Generator:
        """The generator of the batch splits and the noise."""
        return self.engine.generator

    @property
    def last_step(self) -> StepInfo | None:
        """What the last step saw: particle losses and ascent gradient norms."""
        return self._progress.last_step

    @property
    def skipped_steps(self) -> int:
        """How many steps an fp16 gradient overflow skipped."""
        return self._progress.skipped_steps

    @property
    def compiled(self) -> CompiledPasses | None:
        """The compiled passes of the last ``ELBOModule`` closure with a jit ELBO (``None``
        before one)."""
        found = list(self._progress.compiled.values())
        return found[-1][1] if found else None

    # -- the step ---------------------------------------------------------------------------------

    def compute_gradients(self, closure: LossClosure, *args: Any, **kwargs: Any) -> float | None:
        """Run the passes of one step on the batch ``(args, kwargs)``; leave the descent gradient.

        The parameters end where they started, with ``.grad`` holding the descent gradient
        (zeroed first). Returns the mean over particles of the whole batch's loss at the
        perturbed parameters, or ``None`` when an fp16 overflow skipped the step. A following
        :meth:`step` without arguments applies it (the pattern of Lightning's manual
        optimisation: ``opt.compute_gradients(loss_fn, *batch); opt.step()``).

        Usage::

            import torch
            from pyro_otmdr import OTMDROptimizer

            net = torch.nn.Linear(4, 3)
            opt = OTMDROptimizer(net.named_parameters(), torch.optim.SGD(net.parameters(), lr=0.1),
                                 rho=0.05, seed=0)
            x, y = torch.randn(8, 4), torch.randint(3, (8,))
            loss = opt.compute_gradients(lambda x, y: torch.nn.functional.cross_entropy(net(x), y),
                                         x, y)                   # gradients only: clip them here
            opt.step()                                           # then the base optimiser steps
        """
        if not callable(closure):
            raise TypeError("closure must be callable: closure(*args, **kwargs) -> loss tensor")
        self._progress.pending_loss = None
        params = ParamGroups(self._trainable(self._perturbed), self._trainable(self._fixed))
        params.scales = self._current_scales()
        for p in params.all:
            p.grad = None
        scaling: list[PlateScaling] = []  # the first pass's, when the batch is split in halves
        elbo = getattr(closure, "elbo", None)  # an ELBOModule's loss
        if elbo is not None:  # before the noise is fixed
            guess_plate_nesting(elbo, closure.model, closure.guide, args, kwargs)
        noise = FixedReparamNoise.for_batch(args, kwargs, self.engine.savings.closed_form_logq)
        try:
            with noise:  # a Pyro guide's noise is fixed for the step
                if elbo is not None:
                    args, kwargs = prepared_batch(elbo, closure.model, closure.guide, args, kwargs)
                args, kwargs = with_rows(args, kwargs)  # a local latent's noise follows its row
                info = self.engine.run(
                    self._evaluator(closure, scaling, noise),
                    (args, kwargs),
                    self._ascent_batches,
                    params,
                    ascent_context=self._no_sync,
                    mean_over_examples=lambda: (
                        bool(scaling) and scaling[0].holds and per_example_mean(elbo)
                    ),
                )
        except _GradientOverflow:
            self._back_off()
            return None
        self._after_run(params)
        info.reparam_noise = noise.noise
        self._progress.last_step = info
        loss = sum(info.losses) / len(info.losses)
        self._progress.pending_loss = loss
        return loss

    def step(
        self, closure: LossClosure | Callable[[], Any] | None = None, *args: Any, **kwargs: Any
    ) -> float | None:
        """One OT-MDR step: ``closure(*half_batch)`` for every pass, then the base optimiser.

        With batch arguments, ``closure(*args, **kwargs)`` must return the loss on that batch;
        the optimiser splits the batch, does the backward passes, steps the base optimiser and
        zeroes the gradients. Without batch arguments, the descent gradient must come from
        :meth:`compute_gradients` (called before, or inside a no-argument closure, as Lightning
        passes one). Returns the robust loss, or ``None`` for a step skipped by fp16 overflow.

        Usage::

            import torch
            from pyro_otmdr import OTMDROptimizer

            net = torch.nn.Linear(4, 3)
            opt = OTMDROptimizer(net.named_parameters(), torch.optim.SGD(net.parameters(), lr=0.1),
                                 rho=0.05, seed=0)
            x, y = torch.randn(8, 4), torch.randint(3, (8,))
            loss = opt.step(lambda x, y: torch.nn.functional.cross_entropy(net(x), y), x, y)
            assert loss > 0
        """
        if args or kwargs:
            if closure is None:
                raise ValueError("give the loss closure first: opt.step(loss_fn, x, y)")
            loss = self.compute_gradients(closure, *args, **kwargs)
            skipped = loss is None
        else:
            if closure is not None:
                with torch.enable_grad():
                    closure()
            loss = self._progress.pending_loss
            skipped = loss is None and self._progress.skipped_steps > 0
            if loss is None and not skipped:
                raise ValueError(
                    "OTMDROptimizer.step needs the batch: call opt.step(loss_fn, *batch), or "
                    "opt.compute_gradients(loss_fn, *batch) before opt.step()"
                )
        if not skipped:
            self._descend()
        self._progress.pending_loss = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # -- internals --------------------------------------------------------------------------------

    def _ascent_batches(self, batch: Batch) -> Sequence[Batch]:
        args, kwargs = batch
        return self.split_batch(args, kwargs, self.generator)

    def _splits_in_halves(self) -> bool:
        return getattr(self, "split_batch", None) is split_in_halves

    def _evaluator(
        self, closure: LossClosure, scaling: list[PlateScaling], noise: FixedReparamNoise
    ):
        """One pass: the closure's loss, backpropagated. With the default split, the first pass
        appends to ``scaling`` what it saw of Pyro's plates (for an ``ELBOModule`` closure)."""
        scaler = self.grad_scaler
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        watching = self._splits_in_halves()
        compiled = self._compiled_for(closure)
        extra_leaves = self._perturbed + self._fixed

        def evaluate(batch: Batch, label: str) -> torch.Tensor:
            (args, kwargs), rows = without_rows(batch)
            watch = nullcontext()
            if watching and not scaling:  # the first pass
                watch = PlateScaling(batch_size_of(args, kwargs))
                scaling.append(watch)
            with torch.enable_grad(), watch, noise.on_rows(rows):
                if compiled is None:
                    loss = _closure_loss(closure, args, kwargs, self.engine.savings.loss_on_device)
                else:
                    pass_fn, passes = compiled
                    loss = passes.loss(
                        pass_fn,
                        closure.model,
                        closure.guide,
                        args,
                        kwargs,
                        noise=noise,
                        scaling=watch if isinstance(watch, PlateScaling) else None,
                        extra_leaves=extra_leaves,
                    )
            if isinstance(watch, PlateScaling):
                noise.settle(watch.batch_plates)  # the model names the data plate
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError(f"{label}: the closure must return a scalar loss tensor")
            if scaler is None:
                loss.backward()
            elif torch.isfinite(loss).item():  # fp16 syncs anyway: tell a NaN loss from overflow
                scaler.scale(loss).backward()
                self._check_finite_grads(label)  # a scaled fp16 backward may overflow
            return loss.detach()

        return evaluate

    def _compiled_for(self, closure: LossClosure) -> tuple[Callable, CompiledPasses] | None:
        """For an ``ELBOModule`` closure with a jit ELBO: its uncompiled pass and its compiled
        passes (kept from step to step); else ``None``."""
        elbo = getattr(closure, "elbo", None)
        if not isinstance(closure, ELBOModule) or compiled_elbo(elbo) is None:
            return None
        if type(closure) is not ELBOModule or closure._forward_hooks or closure._forward_pre_hooks:
            raise JitTraceError(
                "an ELBOModule with forward hooks (or a subclass) cannot be compiled: a compiled "
                "pass does not call its forward; use the uncompiled ELBO"
            )
        if self._no_sync is not None:
            raise JitTraceError(
                "compiled passes do not run under DDP (no_sync): DDP's forward does not run "
                "in a compiled graph; use the uncompiled ELBO"
            )
        found = self._progress.compiled.get(id(elbo))
        if found is None or found[0] is not elbo:
            found = (elbo, CompiledPasses(compiled_elbo(elbo)))
            self._progress.compiled[id(elbo)] = found
        plain = uncompiled(elbo)

        def pass_fn(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
            return differentiable_pass(plain, model, guide, args, kwargs)

        return pass_fn, found[1]

    def _check_finite_grads(self, label: str) -> None:
        grads = [p.grad for p in self._perturbed + self._fixed if p.grad is not None]
        if grads and not torch.isfinite(global_norm(grads)).item():
            raise _GradientOverflow(label)

    def _back_off(self) -> None:
        scaler = self.grad_scaler
        assert scaler is not None
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        self._progress.skipped_steps += 1

    def _after_run(self, params: ParamGroups) -> None:
        """Hook for the distributed SAM case; nothing for OT-MDR."""

    def _descend(self) -> None:
        scaler = self.grad_scaler
        if scaler is not None and scaler.is_enabled():
            scaler.unscale_(self.base_optimizer)
            scaler.step(self.base_optimizer)
            scaler.update()
        else:
            self.base_optimizer.step()
        self.base_optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _trainable(params: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p for p in params if p.requires_grad]

    @torch.no_grad()
    def _current_scales(self) -> list[torch.Tensor] | None:
        """The posterior geometry's scale of each trainable perturbed parameter, now."""
        if self._scales is None:
            return None
        pairs = zip(self._perturbed, self._scales, strict=True)
        return [to_scale(source) for p, (source, to_scale) in pairs if p.requires_grad]

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state and the generators' states (plain tensors and containers)."""
        state = {"base": self.base_optimizer.state_dict(), "engine": self.engine.state_dict()}
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state_dict, dict) or not {"base", "engine"} <= state_dict.keys():
            raise ValueError(
                "expected the dict of OTMDROptimizer.state_dict() with 'base' and 'engine'; for "
                "the base optimiser alone, call base_optimizer.load_state_dict"
            )
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.engine.load_state_dict(state_dict["engine"])
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class SAMOptimizer(OTMDROptimizer):
    """Sharpness-aware minimisation as a torch optimiser: one full-batch ascent move of radius
    ``rho``, no noise, one particle, then the base optimiser steps with the gradient there.

    Usage::

        import torch
        import torch.nn.functional as F
        from pyro_otmdr import SAMOptimizer

        model = torch.nn.Linear(4, 3)
        x, y = torch.randn(8, 4), torch.randint(3, (8,))
        opt = SAMOptimizer(model.named_parameters(), torch.optim.SGD(model.parameters(), lr=0.1),
                           rho=0.05)
        loss = opt.step(lambda x, y: F.cross_entropy(model(x), y), x, y)
    """

    def __init__(
        self,
        params: ParamsLike,
        base_optimizer: torch.optim.Optimizer,
        *,
        rho: float,
        perturb: PerturbRule | None = None,
        no_sync: Callable[[], AbstractContextManager] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        savings: StepSavings | None = None,
        geometry: str | Geometry | None = None,
    ) -> None:
        engine = SharpnessAwareStep.sam(rho, savings=savings, geometry=geometry)
        self._init(params, base_optimizer, engine, perturb, no_sync, grad_scaler)

    def _ascent_batches(self, batch: Batch) -> Sequence[Batch]:
        return [batch]

    def _after_run(self, params: ParamGroups) -> None:
        # SAM takes the unperturbed parameters' gradient from its ascent pass, which ran inside
        # no_sync: average it over the ranks here.
        if self._no_sync is not None and params.fixed:
            from .distributed import all_reduce_mean_

            all_reduce_mean_(grads_of(params.fixed))


def _closure_loss(
    closure: LossClosure, args: tuple, kwargs: dict, on_device: bool = True
) -> torch.Tensor:
    """``closure(*args, **kwargs)``; for a plain ``ELBOModule`` (no hooks of its own) and
    ``on_device`` (the ``loss_on_device`` saving), its forward's loss computed without a float
    conversion per site (``Trace_ELBO``)."""
    plain = (
        on_device
        and type(closure) is ELBOModule
        and not closure._forward_hooks
        and not closure._forward_pre_hooks
    )
    if not plain:
        return closure(*args, **kwargs)
    return differentiable_loss_on_device(closure.elbo, closure.model, closure.guide, args, kwargs)


def _named(params: ParamsLike) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs from a module, named parameters or plain tensors."""
    if isinstance(params, nn.Module):
        params = params.named_parameters()
    elif isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or (name, tensor) pairs")
    items = list(params)
    if not items:
        raise ValueError(
            "got no parameters: for an autoguide, call the loss once before building the "
            "optimiser so that it creates its parameters"
        )
    if isinstance(items[0], dict):
        raise TypeError("parameter groups go to the base optimiser; pass named_parameters() here")
    named = []
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            named.append((str(i), item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            named.append((str(item[0]), item[1]))
        else:
            raise TypeError(f"params[{i}] is neither a tensor nor a (name, tensor) pair")
    return named


def _scale_sources(
    params: ParamsLike,
    named: list[tuple[str, torch.Tensor]],
    perturb: PerturbRule,
    geometry: Geometry,
) -> list[tuple[torch.Tensor, Callable]] | None:
    """For the posterior geometry, each perturbed parameter's scale: its partner's unconstrained
    tensor and the transform of its constraint, read from the module's Pyro parameters."""
    if not geometry.needs_scales:
        return None
    if not isinstance(params, nn.Module):
        raise TypeError(
            "geometry='posterior' needs the module itself as params (OTMDROptimizer(loss_fn, ...) "
            "for an ELBOModule loss_fn), to read its scales' constraints"
        )
    transforms = {}
    for module in params.modules():
        for name, (constraint, _) in getattr(module, "_pyro_params", {}).items():
            leaf = module._parameters.get(f"{name}_unconstrained")
            if leaf is not None:
                transforms[id(leaf)] = torch.distributions.transform_to(constraint)
    tensors = dict(named)
    names = list(tensors)
    sources = []

    def lookup(name: str) -> torch.Tensor | None:
        partner = scale_partner(name, names)
        if partner is None or id(tensors[partner]) not in transforms:
            return None
        sources.append((tensors[partner], transforms[id(tensors[partner])]))
        return tensors[partner]

    scales_for(geometry, [name for name, _ in named if perturb(name)], lookup)
    return sources
