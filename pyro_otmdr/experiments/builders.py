"""What a configuration builds: the guide, the data-robust loss, the loss, the optimiser.

Usage::

    from pyro_otmdr.experiments import ExperimentConfig, make_loss

    loss = make_loss(ExperimentConfig(method="otmdr", data_robust="armor"))
    assert (type(loss).__name__, type(loss.elbo).__name__) == ("OTMDR", "ARMOR")
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import pyro
import torch
from pyro.infer import ELBO, JitTrace_ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from pyro.optim import PyroOptim

from ..bayes.bnn import BayesianClassifier
from ..bayes.ensemble import AutoDeltaEnsemble, EnsembleELBO
from ..data_space.elbo import DataRobustELBO
from ..model_space.elbo import OTMDR, SAM
from .config import ExperimentConfig
from .names import DATA_ROBUST_PARAMS, DATA_ROBUST_REGISTRY, DEFAULT_RHO
from .settings import check_setting

__all__ = [
    "DATA_ROBUST_LOSSES",
    "make_data_robust",
    "make_elbo",
    "make_guide",
    "make_loss",
    "make_optim",
]


def _class_at(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


#: The data-robust losses by the name of :data:`~.names.DATA_ROBUST` (all but ``"none"``),
#: from the registry :data:`~.names.DATA_ROBUST_REGISTRY`.
DATA_ROBUST_LOSSES: dict[str, type[DataRobustELBO]] = {
    name: _class_at(path) for name, (path, _) in DATA_ROBUST_REGISTRY.items()
}


def _check(config: ExperimentConfig, name: str) -> None:
    check_setting(ExperimentConfig.__dataclass_fields__[name], getattr(config, name))


def make_guide(
    kind: str,
    model: BayesianClassifier,
    member_starts: Sequence[dict] = (),
    init_scale: float = 1e-3,
) -> pyro.nn.PyroModule:
    """``delta`` (AutoDelta), ``normal`` (AutoNormal) or ``ensemble`` (AutoDeltaEnsemble).

    Point estimates and means start at the network's own initial weights, AutoNormal's scales at
    ``init_scale``; ensemble members start at ``member_starts``, one dict of initial values per
    member (fresh network initialisations).

    Usage::

        import torch
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.experiments import make_guide

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        guide = make_guide("normal", model, init_scale=1e-2)
        assert type(guide).__name__ == "AutoNormal"
    """
    check_setting(ExperimentConfig.__dataclass_fields__["guide"], kind)
    init = init_to_value(values=model.initial_values())
    if kind == "delta":
        return AutoDelta(model, init_loc_fn=init)
    if kind == "normal":
        return AutoNormal(model, init_loc_fn=init, init_scale=init_scale)
    inits = [init_to_value(values=values) for values in member_starts]
    return AutoDeltaEnsemble(model, num_members=len(inits), init_loc_fn=inits)


def make_data_robust(config: ExperimentConfig, elbo: ELBO | None = None) -> ELBO:
    """``elbo`` (default ``Trace_ELBO()``) wrapped by the data-robust loss of ``config``.

    ``"none"`` returns ``elbo`` itself; another name builds its class of
    :data:`DATA_ROBUST_LOSSES` with the configuration fields the registry lists for it
    (``"at"``: :class:`~pyro_otmdr.AdversarialTraining` with ``eps``; ``"trades"``:
    :class:`~pyro_otmdr.TRADES` with ``eps`` and ``beta``; ``"wdat"``: :class:`~pyro_otmdr.WDAT`
    with ``delta`` and ``beta``; ``"armor"``: :class:`~pyro_otmdr.ARMOR` with ``eps`` and
    ``budget``); every other option at the loss's default (10 ascent steps). The losses loop
    over an ensemble's members themselves.

    Usage::

        from pyro_otmdr.experiments import ExperimentConfig, make_data_robust

        loss = make_data_robust(ExperimentConfig(data_robust="wdat", delta=0.05))
        assert type(loss).__name__ == "WDAT"
    """
    _check(config, "data_robust")
    elbo = Trace_ELBO() if elbo is None else elbo
    if config.data_robust == "none":
        return elbo
    options = {name: getattr(config, name) for name in DATA_ROBUST_PARAMS[config.data_robust]}
    return DATA_ROBUST_LOSSES[config.data_robust](elbo, **options)


def make_elbo(config: ExperimentConfig) -> ELBO:
    """The ELBO of a run: ``Trace_ELBO()``, or with ``jit`` ``JitTrace_ELBO()``.

    The jit ELBO is built with ``ignore_jit_warnings=True``: the project's models check shapes
    (which the compiled passes key on) and hold no control flow on a tensor's value.

    Usage::

        from pyro_otmdr.experiments import ExperimentConfig
        from pyro_otmdr.experiments.builders import make_elbo

        assert type(make_elbo(ExperimentConfig())).__name__ == "Trace_ELBO"
        assert type(make_elbo(ExperimentConfig(jit=True))).__name__ == "JitTrace_ELBO"
    """
    return JitTrace_ELBO(ignore_jit_warnings=True) if config.jit else Trace_ELBO()


def make_loss(config: ExperimentConfig) -> ELBO:
    """The loss of a run: the ELBO, wrapped by the data-robust loss, wrapped by SAM or OT-MDR.

    The ELBO is ``Trace_ELBO``, or with ``jit`` ``JitTrace_ELBO`` (:func:`make_elbo`; in
    :class:`~pyro_otmdr.EnsembleELBO` for plain SVI of an ensemble without a data-robust loss);
    ``data_robust`` other than ``"none"`` wraps it (:func:`make_data_robust`); then ``method``
    ``sam`` or ``otmdr`` wraps that (``svi`` leaves it as it is). With ``jit``, SAM and OT-MDR
    compile their passes (:mod:`pyro_otmdr.model_space.jit`), data-robust losses but ARMOR
    included, and plain SVI without a data-robust loss runs Pyro's own ``JitTrace_ELBO``.

    Usage::

        from pyro_otmdr.experiments import ExperimentConfig, make_loss

        loss = make_loss(ExperimentConfig(method="sam", guide="delta"))
        assert type(loss).__name__ == "SAM" and loss.rho == 0.05
        loss = make_loss(ExperimentConfig(method="otmdr", jit=True))
        assert type(loss.elbo).__name__ == "JitTrace_ELBO" and loss.compiled is not None
    """
    _check(config, "method")
    rho = DEFAULT_RHO.get(config.guide, 0.05) if config.rho is None else config.rho
    if config.data_robust != "none":
        if config.jit and (config.data_robust == "armor" or config.method == "svi"):
            why = (
                "armor solves its dual on the batch's values, which a trace cannot follow"
                if config.data_robust == "armor"
                else "under plain SVI a data-robust loss runs its ELBO uncompiled"
            )
            raise ValueError(f"--jit with --data-robust {config.data_robust}: {why}; drop --jit")
        base = make_data_robust(config, make_elbo(config))  # loops over an ensemble's members
    elif config.method == "svi" and config.guide == "ensemble":
        base = EnsembleELBO(make_elbo(config))
    else:
        base = make_elbo(config)
    if config.method == "svi":
        return base
    if config.method == "sam":
        return SAM(base, rho=rho, geometry=config.geometry)
    return OTMDR(
        base,
        rho=rho,
        rho2=config.rho2,
        n_particles=config.n_particles,
        noise_std=config.noise_std,
        seed=config.seed,
        geometry=config.geometry,
    )


def make_optim(config: ExperimentConfig, num_data: int) -> PyroOptim:
    """Adam or SGD with momentum, under a per-epoch cosine schedule or a constant rate.

    The ELBO is a sum over the N training examples, not a mean. Adam does not care; for SGD the
    learning rate is per example: the torch optimiser gets ``lr / num_data``, which is SGD with
    ``lr`` on the per-example loss, so the usual CIFAR values (0.1) carry over. ``cosine`` is
    ``pyro.optim.CosineAnnealingLR`` with ``T_max = epochs``: call ``optim.step()`` after every
    epoch (:func:`~pyro_otmdr.experiments.runs.train_experiment` does).

    Usage::

        from pyro.optim.lr_scheduler import PyroLRScheduler
        from pyro_otmdr.experiments import ExperimentConfig, make_optim

        optim = make_optim(ExperimentConfig(optimizer="sgd", lr=0.1), num_data=1000)
        assert isinstance(optim, PyroLRScheduler)   # call optim.step() after every epoch
    """
    _check(config, "optimizer")
    _check(config, "schedule")
    if config.optimizer == "adam":
        ctor, args = torch.optim.Adam, {"lr": config.lr}
    else:
        ctor, args = torch.optim.SGD, {"lr": config.lr / num_data, "momentum": config.momentum}
    if config.schedule == "constant":
        return PyroOptim(ctor, args)
    return pyro.optim.CosineAnnealingLR(
        {"optimizer": ctor, "optim_args": args, "T_max": config.epochs}
    )
