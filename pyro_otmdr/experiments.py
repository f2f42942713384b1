"""One experiment run: build data, a Bayesian model, a guide and a loss by name; train; evaluate.

This is the layer the command-line tool and the benchmarks stand on; the examples show the same
steps written out as plain Pyro code.

Usage::

    metrics = run_experiment(dataset="digits", guide="normal", method="otmdr", rho=0.005,
                             epochs=30, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro.infer import ELBO, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value

from .bayesian import BayesianClassifier, bayesian
from .data import load_dataset
from .ensemble import AutoDeltaEnsemble, EnsembleELBO
from .evaluation import evaluate
from .models import build_model
from .otmdr import DEFAULT_NOISE_STD, OTMDR, SAM
from .training import fit

__all__ = ["GUIDES", "METHODS", "ExperimentConfig", "make_guide", "make_loss", "run_experiment"]

GUIDES = ("delta", "ensemble", "normal")
METHODS = ("svi", "sam", "otmdr")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one run (digits MLP defaults)."""

    dataset: str = "digits"
    model: str = "mlp"
    hidden: tuple[int, ...] = (128,)
    guide: str = "normal"
    method: str = "otmdr"
    rho: float = 0.005
    rho2: float | None = None
    n_particles: int = 1
    num_members: int = 5
    noise_std: float = DEFAULT_NOISE_STD
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-2
    prior_scale: float = 1.0
    num_samples: int = 32
    seed: int = 0


def make_guide(
    kind: str, model: BayesianClassifier, member_starts: Sequence[dict] = ()
) -> pyro.nn.PyroModule:
    """``delta`` (AutoDelta), ``normal`` (AutoNormal) or ``ensemble`` (AutoDeltaEnsemble).

    Point estimates and means start at the network's own initial weights; ensemble members start
    at ``member_starts``, one dict of initial values per member (fresh network initialisations).
    """
    if kind not in GUIDES:
        raise ValueError(f"unknown guide {kind!r}; choose one of {', '.join(GUIDES)}")
    init = init_to_value(values=model.initial_values())
    if kind == "delta":
        return AutoDelta(model, init_loc_fn=init)
    if kind == "normal":
        return AutoNormal(model, init_loc_fn=init, init_scale=1e-3)
    inits = [init_to_value(values=values) for values in member_starts]
    return AutoDeltaEnsemble(model, num_members=len(inits), init_loc_fn=inits)


def make_loss(config: ExperimentConfig) -> ELBO:
    """The plain ELBO (``svi``), or it wrapped by ``sam`` or ``otmdr``."""
    if config.method == "svi":
        return EnsembleELBO(Trace_ELBO()) if config.guide == "ensemble" else Trace_ELBO()
    if config.method == "sam":
        return SAM(Trace_ELBO(), rho=config.rho)
    if config.method == "otmdr":
        return OTMDR(
            Trace_ELBO(),
            rho=config.rho,
            rho2=config.rho2,
            n_particles=config.n_particles,
            noise_std=config.noise_std,
            seed=config.seed,
        )
    raise ValueError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")


def run_experiment(config: ExperimentConfig | None = None, **overrides) -> dict[str, float]:
    """Train on the in-memory training split and return the test metrics of :func:`evaluate`."""
    config = ExperimentConfig(**{**(config.__dict__ if config else {}), **overrides})
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    splits = load_dataset(config.dataset, seed=config.seed)
    x, y = splits.train.tensors

    def new_net() -> torch.nn.Module:
        return build_model(
            config.model,
            num_classes=splits.num_classes,
            in_features=x.shape[-1],
            hidden=config.hidden,
        )

    model = bayesian(new_net(), num_data=len(x), prior_scale=config.prior_scale)
    members = config.num_members if config.guide == "ensemble" else 0
    starts = [bayesian(new_net(), num_data=len(x)).initial_values() for _ in range(members)]
    guide = make_guide(config.guide, model, starts)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": config.lr}), loss=make_loss(config))
    fit(svi, x, y, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed)
    model.eval()
    x_val, y_val = splits.val.tensors if splits.val is not None else (None, None)
    result = evaluate(model, guide, *splits.test.tensors, num_samples=config.num_samples,
                      x_val=x_val, y_val=y_val)  # fmt: skip
    return result.metrics
