"""Data-robust training as a drop-in ``loss=`` for an unchanged :class:`pyro.infer.SVI`.

Each loss wraps a Pyro ELBO and makes its likelihood term robust; the prior and KL
terms stay as they are (see the docs, Algorithms: Data-robust losses inside an ELBO):

* :class:`AdversarialTraining`: the log-likelihood at PGD inputs (Madry);
* :class:`TRADES`: clean log-likelihood minus ``beta * N * mean_i KL(p(x_i) || p(x'_i))``;
* :class:`WDAT`: a W2 attack with a per-batch budget (W-PGD-Budget), then CE (parts reconstructed);
* :class:`ARMOR`: ``N`` times ARMOR_D's dual aggregate of the per-example losses.

How a step goes, for a classifier whose labels are observed by a ``Categorical`` at ``site``
(``"obs"``; under Pyro's subsampling plate, as :func:`~pyro_otmdr.bayes.bnn.bayesian` builds it):

1. one weight sample is fixed for the step: the guide's draw (``AutoNormal``), the point
   (``AutoDelta``), each member in turn (an ensemble);
2. the model is replayed under it, in eval mode, as ``x -> logits`` (read from the site's
   distribution) and attacked: ``x_adv``, detached;
3. the wrapped ELBO runs on the model with the site's likelihood replaced by the objective's:
   the model runs at ``x_adv`` and, when the objective needs the clean logits, once more at ``x``
   under the same weights; the site's per-example log-density is ``-losses(clean, adv, y)``.

Wrapped by :class:`~pyro_otmdr.OTMDR` or :class:`~pyro_otmdr.SAM`, the attack runs ONCE per step
at the unperturbed parameters (inputs first, then weights, as AWP does) and every pass of the
step reuses it: OT-MDR calls :meth:`DataRobustELBO.prepare_step`, which carries ``x_adv`` along
with the batch so that the halves get their rows. ``regenerate="per_pass"`` attacks at every pass
instead (at the perturbed weights).

On its own, a loss keeps OT-MDR's guarantee: the batch's inputs are checked before anything sees
them, and a NaN or infinite input or loss raises :class:`~pyro_otmdr.NonFiniteLossError` with the
parameters, their ``.grad``, the objective's state (WDAT's estimate) and, as ``SVI`` steps its
optimiser only after ``loss_and_grads``, the optimiser's state as they were: a training loop may
skip the batch. Under OT-MDR/SAM the step checks and restores (the attack in
:meth:`~DataRobustELBO.prepare_step` raises for a non-finite input before the step begins).

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoDelta
    from pyro_otmdr import ARMOR, OTMDR, TRADES
    from pyro_otmdr.bayes import bayesian

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    guide, optim = AutoDelta(model), pyro.optim.Adam({"lr": 1e-3})
    x, y = torch.rand(8, 4), torch.randint(3, (8,))      # inputs in the [0, 1] box
    svi = SVI(model, guide, optim, loss=TRADES(Trace_ELBO(), eps=0.1, beta=6.0))
    svi.step(x, y)
    svi = SVI(model, guide, optim, loss=OTMDR(ARMOR(Trace_ELBO(), eps=0.1), rho=0.05))
    svi.step(x, y)                                       # one attack, then OT-MDR's passes
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger

from ..bayes.members import over_members
from ..bayes.replay import categorical_of, guide_latents, trace_latents
from ..bayes.wrapper import COMPILED_ELBOS, WrapperELBO
from ..model_space.reparam_noise import FixedReparamNoise
from ..model_space.step import NonFiniteLossError
from .common import attack_mode, check_choice
from .objectives import AdversarialLoss, ArmorLoss, RobustObjective, TradesLoss, WdatLoss

__all__ = ["ARMOR", "TRADES", "WDAT", "AdversarialTraining", "DataRobustELBO"]

PREPARED_KEY = "_pyro_otmdr_adversarial_inputs"
"""The keyword that carries a step's adversarial inputs from :meth:`prepare_step` to the passes."""

REGENERATE = ("per_step", "per_pass")


class DataRobustELBO(WrapperELBO):
    """Wrap a Pyro ELBO so that its likelihood term is a data-robust objective's.

    :param elbo: the ELBO to make robust (``Trace_ELBO``, ``TraceMeanField_ELBO``, ...). A jit
        ``JitTrace_ELBO`` or ``JitTraceMeanField_ELBO`` is compiled by ``OTMDR``/``SAM`` around
        the loss (the attack runs outside the graph); on its own, under a plain ``SVI``, the
        loss runs its uncompiled counterpart. ARMOR refuses jit ELBOs (its dual is solved on
        the batch's values, which a trace cannot follow).
    :param objective: the method, a :class:`~.objectives.RobustObjective`, or its class, built
        from ``options`` (the named losses below do that).
    :param input_arg: where the model takes the inputs: a position (default 0) or a keyword.
    :param site: the observed site whose ``Categorical`` likelihood is made robust.
    :param regenerate: ``"per_step"`` (default): under OT-MDR/SAM, one attack per step at the
        unperturbed parameters, reused by every pass; ``"per_pass"``: one attack per pass.
    """

    accepts_jit = tuple(COMPILED_ELBOS)

    def __init__(
        self,
        elbo: ELBO,
        objective: RobustObjective | type[RobustObjective],
        *,
        input_arg: int | str = 0,
        site: str = "obs",
        regenerate: str = "per_step",
        **options: Any,
    ) -> None:
        if isinstance(objective, type):
            objective = objective(**options)
        elif options:
            raise TypeError(f"unexpected options {sorted(options)} next to a built objective")
        if not isinstance(objective, RobustObjective):
            raise TypeError(f"objective must be a RobustObjective, got {type(objective).__name__}")
        if isinstance(input_arg, bool) or not isinstance(input_arg, int | str):
            raise TypeError(f"input_arg must be a position or a keyword, got {input_arg!r}")
        if not isinstance(site, str):
            raise TypeError(f"site must be the name of the observed site, got {site!r}")
        check_choice("regenerate", regenerate, REGENERATE)
        super().__init__(elbo)
        self.objective = objective
        self.input_arg, self.site, self.regenerate = input_arg, site, regenerate
        self.attacks = 0  # how many attacks ran, for monitoring and tests

    @property
    def per_example_mean(self) -> bool:
        """Whether a batch's loss is a mean over examples (OT-MDR's half-batch shortcut)."""
        return self.objective.per_example_mean

    # -- the Pyro ELBO interface ---------------------------------------------------------------

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The robust loss (the attack runs, with gradients on the inputs only); a NaN value is
        returned as Pyro's ELBOs return it, but a NaN input raises."""
        with self._guard(args, kwargs, grads=False):
            return float(over_members(guide, lambda: self._run("loss", model, guide, args, kwargs)))

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """The robust loss as a differentiable tensor (the torch route's ``ELBOModule``);
        ``NonFiniteLossError`` when it is NaN or infinite (one device sync)."""
        with self._guard(args, kwargs, grads=False):
            loss = over_members(
                guide, lambda: self._run("differentiable_loss", model, guide, args, kwargs)
            )
            self._refuse_non_finite(loss, kwargs)
        return loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The robust loss, backpropagated into the parameters' ``.grad``; an ensemble's
        members each take their own attack and pass. ``NonFiniteLossError`` when it is NaN or
        infinite, with the ``.grad`` as they were."""
        with self._guard(args, kwargs, grads=True):
            value = self.per_member(
                guide, lambda: self._run("loss_and_grads", model, guide, args, kwargs)
            )
            self._refuse_non_finite(value, kwargs)
        return value

    # -- state: the objective's (WDAT's running estimate), nested by WrapperELBO -----------------

    def own_state_dict(self) -> dict[str, Any]:
        """The objective's state, if it has one (WDAT's running sensitivity estimate)."""
        state_dict = getattr(self.objective, "state_dict", None)
        return dict(state_dict()) if state_dict is not None else {}

    def load_own_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`own_state_dict` returned."""
        if state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state)

    # -- once per step ---------------------------------------------------------------------------

    def prepare_step(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """Attack once at the current parameters; return the batch carrying ``x_adv``.

        Called by OT-MDR/SAM (and their torch optimisers) before the passes of a step, with the
        step's guide; a batch that already carries adversarial inputs, or ``regenerate=
        "per_pass"``, is returned unchanged. The inputs travel as a keyword argument with the
        batch's leading dimension, so the default half-batch split keeps them aligned.
        """
        if self.regenerate == "per_pass" or PREPARED_KEY in kwargs:
            return args, kwargs
        with self._guard(args, kwargs, grads=False):
            x_adv = self._attack(model, guide, args, kwargs)
        return args, {**kwargs, PREPARED_KEY: x_adv}

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, args: tuple, kwargs: dict, *, grads: bool) -> Iterator[None]:
        """Around a loss: the batch's inputs checked before anything sees them, and after any
        error the objective's state (and with ``grads`` the parameters' ``.grad``) as before.

        A batch prepared by :meth:`prepare_step` is a pass of OT-MDR/SAM: checked there, and the
        step restores the parameters itself.
        """
        if PREPARED_KEY in kwargs:
            yield
            return
        with (
            self.objective.inputs_checked(self._input(args, kwargs)),
            _kept_on_error(self.objective),
            _GradsAside() if grads else contextlib.nullcontext(),
        ):
            yield

    def _refuse_non_finite(self, loss: torch.Tensor | float, kwargs: dict) -> None:
        """``NonFiniteLossError`` for a NaN or infinite loss, unless OT-MDR/SAM checks it (a
        prepared batch). Pyro's ELBOs return a float: no device sync of its own then."""
        if PREPARED_KEY in kwargs:
            return
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if math.isfinite(value):
            return
        raise NonFiniteLossError(
            f"{type(self).__name__}: the loss is {value}; nothing was updated: the "
            "parameters, their gradients and the objective's state are as before, and the "
            "optimiser has not stepped (skip this batch, or lower the learning rate)"
        )

    def _run(self, method: str, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        kwargs = dict(kwargs)
        x_adv = kwargs.pop(PREPARED_KEY, None)
        guide = FixedReparamNoise()(guide)  # one weight sample for the attack and the pass
        if x_adv is None:
            x_adv = self._attack(model, guide, args, kwargs)
        robust_model = _RobustLikelihoodModel(model, self, args, kwargs, x_adv)
        adv_args, adv_kwargs = self._with_input(args, kwargs, x_adv)
        return getattr(self.uncompiled, method)(robust_model, guide, *adv_args, **adv_kwargs)

    def _attack(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """The adversarial inputs at the guide's (fixed) draw, the model in eval mode."""
        x = self._input(args, kwargs)
        with torch.no_grad():
            latents = {k: v.detach() for k, v in guide_latents(guide, args, kwargs).items()}
        predict = _Replayed(self, model, latents, args, kwargs)
        with attack_mode(predict):
            y = predict.labels(x)
            x_adv = self.objective.adversarial(predict, x, y)
        self.attacks += 1
        return x_adv

    def _input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        where = self.input_arg
        found = args[where] if isinstance(where, int) and where < len(args) else kwargs.get(where)
        if not isinstance(found, torch.Tensor) or not found.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} found no input tensor at input_arg={where!r} of the "
                "model's arguments: pass the inputs there (svi.step(x, y)) or set input_arg= "
                "to their position or keyword"
            )
        return found

    def _with_input(self, args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
        if isinstance(self.input_arg, int) and self.input_arg < len(args):
            return (*args[: self.input_arg], x, *args[self.input_arg + 1 :]), kwargs
        return args, {**kwargs, self.input_arg: x}

    def _site_logits(self, trace) -> torch.Tensor:
        node = trace.nodes.get(self.site)
        if node is None or node["type"] != "sample" or not node["is_observed"]:
            sites = [
                n for n, s in trace.nodes.items() if s["type"] == "sample" and s["is_observed"]
            ]
            raise ValueError(
                f"{type(self).__name__}: the model has no observed site {self.site!r}; pass "
                f"site= the name of the labels' site (observed sites: {sites})"
            )
        return _logits_of(node["fn"], self.site)


@contextlib.contextmanager
def _kept_on_error(objective: RobustObjective) -> Iterator[None]:
    """The objective's attributes (WDAT's estimate, the last batch's figures) put back after an
    error: the objectives replace their state, they never change it in place."""
    saved = dict(vars(objective))
    try:
        yield
    except BaseException:
        vars(objective).clear()
        vars(objective).update(saved)
        raise


class _GradsAside(Messenger):
    """Set each parameter's ``.grad`` aside when a pass first reads the parameter (before any
    backward can reach it); on leaving, add the pass's gradients to them, or after an error put
    them back untouched. No device sync."""

    def __init__(self) -> None:
        super().__init__()
        self.aside: dict[torch.Tensor, torch.Tensor | None] = {}

    def _pyro_post_param(self, msg: dict) -> None:
        unconstrained = getattr(msg["value"], "unconstrained", None)
        leaf = unconstrained() if callable(unconstrained) else None
        if leaf is not None and leaf not in self.aside:
            self.aside[leaf] = leaf.grad
            leaf.grad = None

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        super().__exit__(exc_type, exc_value, traceback)
        for leaf, before in self.aside.items():
            if exc_type is not None:
                leaf.grad = before
            elif before is not None:
                leaf.grad = before if leaf.grad is None else before.add_(leaf.grad)


def _logits_of(fn: Any, site: str) -> torch.Tensor:
    """The ``(B, C)`` logits of a per-example categorical likelihood."""
    if not isinstance(fn, torch.distributions.Distribution):
        raise ValueError(f"site {site!r} holds no distribution")
    try:
        logits = categorical_of(fn, site).logits
    except ValueError as error:
        raise ValueError(
            f"the data-robust losses need a classifier: {error}. Observe the labels with "
            "pyro.sample(site, dist.Categorical(logits=...), obs=y)"
        ) from None
    if len(fn.event_shape) != 0:
        raise ValueError(
            f"site {site!r} must have one Categorical per example, not an event of shape "
            f"{tuple(fn.event_shape)}: drop .to_event() on the likelihood"
        )
    return logits.reshape(-1, logits.shape[-1])


class _Replayed:
    """``x -> logits`` of the wrapped model under fixed latent values (the attack's predictor)."""

    def __init__(self, owner: DataRobustELBO, model, latents, args, kwargs) -> None:
        self.owner, self.model, self.latents, self.args, self.kwargs = (
            owner,
            model,
            latents,
            args,
            kwargs,
        )

    def _trace(self, x: torch.Tensor):
        args, kwargs = self.owner._with_input(self.args, self.kwargs, x)
        with poutine.block():
            conditioned = poutine.condition(self.model, data=self.latents)
            return poutine.trace(conditioned).get_trace(*args, **kwargs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner._site_logits(self._trace(x))

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The observed labels of the batch (the site's value)."""
        trace = self._trace(x)
        self.owner._site_logits(trace)  # a categorical likelihood, one per example
        value = trace.nodes[self.owner.site]["value"]
        if (
            not isinstance(value, torch.Tensor)
            or value.is_floating_point()
            or value.numel() != x.shape[0]
        ):
            raise ValueError(
                f"site {self.owner.site!r} must observe one integer label per example; pass the "
                "labels to the model (svi.step(x, y))"
            )
        return value.reshape(-1).long()


class _RobustLikelihood(TorchDistribution):
    """The site's likelihood made robust: ``log_prob(y) = -objective.losses(clean, adv, y)``.

    Built at the site during the pass at ``x_adv`` (whose logits it holds); the clean logits,
    when the objective needs them, are set once the model has also run at ``x``. The ELBO asks
    for the log-density only after the model returns.
    """

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, fn: TorchDistribution, objective: RobustObjective, site: str) -> None:
        self.fn, self.objective = fn, objective
        self.adv_logits = _logits_of(fn, site)
        self.clean_logits: torch.Tensor | None = None
        super().__init__(fn.batch_shape, fn.event_shape, validate_args=False)

    @property
    def support(self):
        return self.fn.support

    def sample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        return self.fn.sample(torch.Size(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.objective.needs_clean and self.clean_logits is None:
            raise RuntimeError("the clean pass of the robust likelihood did not run")
        y = value.reshape(-1).long()
        losses = self.objective.losses(self.clean_logits, self.adv_logits, y)
        return -losses.reshape(self.batch_shape)


class _SwapLikelihood(Messenger):
    """Replace the observed site's distribution by its robust counterpart."""

    def __init__(self, site: str, objective: RobustObjective) -> None:
        super().__init__()
        self.site, self.objective = site, objective
        self.likelihood: _RobustLikelihood | None = None

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.site and msg["is_observed"]:
            self.likelihood = _RobustLikelihood(msg["fn"], self.objective, self.site)
            msg["fn"] = self.likelihood


class _RobustLikelihoodModel:
    """The user's model at ``x_adv`` with the robust likelihood; the clean pass (same latents,
    hidden from the ELBO) runs after it when the objective needs the clean logits."""

    def __init__(self, model, owner: DataRobustELBO, args, kwargs, x_adv) -> None:
        self.model, self.owner = model, owner
        self.args, self.kwargs, self.x_adv = args, kwargs, x_adv

    def __call__(self, *adv_args: Any, **adv_kwargs: Any) -> Any:
        owner = self.owner
        swap = _SwapLikelihood(owner.site, owner.objective)
        with poutine.trace() as seen, swap:
            result = self.model(*adv_args, **adv_kwargs)
        if swap.likelihood is None:
            owner._site_logits(seen.trace)  # raises, naming the observed sites
        if owner.objective.needs_clean:
            latents = trace_latents(seen.trace)
            x = owner._input(self.args, self.kwargs)
            swap.likelihood.clean_logits = _Replayed(
                owner, self.model, latents, self.args, self.kwargs
            )(x)
        return result


class AdversarialTraining(DataRobustELBO):
    """PGD adversarial training (Madry et al.): the log-likelihood at PGD inputs.

    Keyword arguments: those of :class:`~.objectives.AdversarialLoss` (``eps=8/255, steps=10,
    step_size=eps/4, norm="linf", mix=0, box=(0, 1)``) and of :class:`DataRobustELBO`
    (``input_arg, site, regenerate``).

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoDelta
        from pyro_otmdr import AdversarialTraining
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        guide, optim = AutoDelta(model), pyro.optim.Adam({"lr": 1e-3})
        x, y = torch.rand(8, 4), torch.randint(3, (8,))  # inputs in the [0, 1] box
        svi = SVI(model, guide, optim, loss=AdversarialTraining(Trace_ELBO(), eps=0.1))
        loss = svi.step(x, y)
    """

    def __init__(self, elbo: ELBO, **options: Any) -> None:
        super().__init__(elbo, AdversarialLoss, **options)


class TRADES(DataRobustELBO):
    """TRADES: clean log-likelihood minus ``beta * N * mean_i KL(p(x_i) || p(x'_i))``, both
    under the step's weight sample.

    Keyword arguments: those of :class:`~.objectives.TradesLoss` (``eps=8/255, beta=6,
    steps=10, step_size=eps/4, norm="linf", box``) and of :class:`DataRobustELBO`.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoDelta
        from pyro_otmdr import TRADES
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        guide, optim = AutoDelta(model), pyro.optim.Adam({"lr": 1e-3})
        x, y = torch.rand(8, 4), torch.randint(3, (8,))  # inputs in the [0, 1] box
        svi = SVI(model, guide, optim, loss=TRADES(Trace_ELBO(), eps=0.1, beta=6.0))
        loss = svi.step(x, y)
    """

    def __init__(self, elbo: ELBO, **options: Any) -> None:
        super().__init__(elbo, TradesLoss, **options)


class WDAT(DataRobustELBO):
    """Wasserstein distributional adversarial training: the batch attacked by W-PGD-Budget on
    ReDLR within its share ``delta * Upsilon_B / Upsilon_hat`` of a W2 budget, then CE at the
    clean inputs plus ``beta`` times TRADES' KL at the attacked ones (``outer="trades"``) or CE
    at the attacked ones (``outer="adversarial"``); see :class:`~.objectives.WdatLoss`.

    Keyword arguments: those of :class:`~.objectives.WdatLoss` (``delta=8/255, beta=6,
    steps=10, step_ratio=1.875, cost="linf", attack_loss="redlr", outer="trades",
    budget_subset=10, decay=0.9, box``) and of :class:`DataRobustELBO`.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoDelta
        from pyro_otmdr import WDAT
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        guide, optim = AutoDelta(model), pyro.optim.Adam({"lr": 1e-3})
        x, y = torch.rand(8, 4), torch.randint(3, (8,))  # inputs in the [0, 1] box
        svi = SVI(model, guide, optim, loss=WDAT(Trace_ELBO(), delta=0.1, beta=6.0))
        loss = svi.step(x, y)
    """

    def __init__(self, elbo: ELBO, **options: Any) -> None:
        super().__init__(elbo, WdatLoss, **options)


class ARMOR(DataRobustELBO):
    """ARMOR_D (KL): ``N * (mix * mean CE(x) + (1 - mix) * dual(L))``, the losses at the
    transported inputs re-weighted within a KL ``budget``.

    Keyword arguments: those of :class:`~.objectives.ArmorLoss` (``eps=8/255, budget=0.02,
    kappa=0.1, mix=0.5, base="at", beta=6, steps=10, step_size=eps/4, norm, lambda_max=100,
    box``) and of :class:`DataRobustELBO`. The batch's loss is not a mean over examples, so
    under OT-MDR a Gaussian guide's scales take a whole-batch pass.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoDelta
        from pyro_otmdr import ARMOR
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        guide, optim = AutoDelta(model), pyro.optim.Adam({"lr": 1e-3})
        x, y = torch.rand(8, 4), torch.randint(3, (8,))  # inputs in the [0, 1] box
        armor = ARMOR(Trace_ELBO(), eps=0.1, budget=0.02)
        svi = SVI(model, guide, optim, loss=armor)
        loss = svi.step(x, y)
        assert armor.objective.last_dual.lam >= 0     # the dual's multiplier of this step
    """

    accepts_jit = False  # the dual is solved on the batch's values: a trace cannot follow it

    def __init__(self, elbo: ELBO, **options: Any) -> None:
        super().__init__(elbo, ArmorLoss, **options)
