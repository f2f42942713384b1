"""The names an experiment is built from, as plain constants: no torch, no Pyro.

The ``otmdr`` parser offers these as choices, so it needs them without importing the libraries
that build the objects (``otmdr --help`` stays fast). The threats come from their torch-free
registry (:mod:`pyro_otmdr.evaluation.threats`); the model, data-set and shift names are copies
of registries that live beside torch code, and ``tests/experiments/test_names.py`` checks that
they agree.

Usage::

    from pyro_otmdr.experiments.names import DATA_ROBUST, GUIDES, METHODS

    assert "otmdr" in METHODS and "armor" in DATA_ROBUST
"""

from __future__ import annotations

from ..evaluation.threats import THREATS

__all__ = [
    "DATASET_NAMES",
    "DATA_ROBUST",
    "DATA_ROBUST_PARAMS",
    "DATA_ROBUST_REGISTRY",
    "DEFAULT_RHO",
    "GEOMETRIES",
    "GUIDES",
    "METHODS",
    "MODEL_NAMES",
    "OPTIMIZERS",
    "REGRESSION_DATASETS",
    "SCHEDULES",
    "SHIFT_NAMES",
    "THREAT_NAMES",
    "WDAT_ATTACK_LOSSES",
    "WDAT_OUTERS",
    "users_of",
]

DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10", "cifar100", "fakedata", "diabetes")
#: The regression data sets among them: a run builds ``bayesian(..., likelihood="normal")``,
#: monitors the RMSE and reports the regression metrics (the others are classification).
REGRESSION_DATASETS: tuple[str, ...] = ("diabetes",)
MODEL_NAMES: tuple[str, ...] = (
    "mlp",
    "cnn",
    "resnet10",
    "resnet18",
    "wrn28_10",
    "wrn",
    "mobilenet_v2",
    "efficientnet_b0",
    "densenet121",
)
GUIDES: tuple[str, ...] = ("delta", "ensemble", "normal")
METHODS: tuple[str, ...] = ("svi", "sam", "otmdr")
#: The geometries of the ascent move (:mod:`pyro_otmdr.model_space.geometry`), the default first.
GEOMETRIES: tuple[str, ...] = ("global", "layer", "elementwise", "posterior")
#: The data-robust training losses of ``ExperimentConfig.data_robust``, the one place that
#: registers them: the class (``"module:attribute"``, imported when a run builds one) and the
#: configuration fields it takes as keywords. A new loss is one line here; a parameter that no
#: loss had before is one field of ``ExperimentConfig``.
DATA_ROBUST_REGISTRY: dict[str, tuple[str, tuple[str, ...]]] = {
    "at": ("pyro_otmdr.data_space:AdversarialTraining", ("eps",)),
    "trades": ("pyro_otmdr.data_space:TRADES", ("eps", "beta")),
    "wdat": (
        "pyro_otmdr.data_space:WDAT",
        ("delta", "beta", "attack_loss", "outer", "budget_subset"),
    ),
    "armor": ("pyro_otmdr.data_space:ARMOR", ("eps", "budget")),
}
#: WDAT's training attack losses (the paper's first) and outer losses (see ``WdatLoss``).
WDAT_ATTACK_LOSSES: tuple[str, ...] = ("redlr", "ce", "kl")
WDAT_OUTERS: tuple[str, ...] = ("trades", "adversarial")
#: The names of :data:`DATA_ROBUST_REGISTRY`, after ``"none"``, the plain likelihood.
DATA_ROBUST: tuple[str, ...] = ("none", *DATA_ROBUST_REGISTRY)
#: The ``ExperimentConfig`` fields each data-robust loss takes (the keywords of its class).
DATA_ROBUST_PARAMS: dict[str, tuple[str, ...]] = {
    "none": (),
    **{name: params for name, (_, params) in DATA_ROBUST_REGISTRY.items()},
}


def users_of(param: str) -> str:
    """The data-robust losses that take ``param``, as text for a flag's help (``at, trades``)."""
    return ", ".join(name for name, params in DATA_ROBUST_PARAMS.items() if param in params)


OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")

#: The paper's radius per guide, used when ``rho`` is not given.
DEFAULT_RHO: dict[str, float] = {"delta": 0.05, "ensemble": 0.05, "normal": 0.005}

#: The threats of :func:`pyro_otmdr.robustness` (registered in
#: :data:`pyro_otmdr.evaluation.threats.THREATS`, a module without torch).
THREAT_NAMES: tuple[str, ...] = tuple(THREATS)
#: The shifts of :mod:`pyro_otmdr.evaluation.shift`.
SHIFT_NAMES: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "rotation", "contrast")
