"""The names an experiment is built from, as plain constants: no torch, no Pyro.

The ``otmdr`` parser offers these as choices, so it needs them without importing the libraries
that build the objects (``otmdr --help`` stays fast). The modules that build the objects use the
same constants; ``tests/experiments/test_names.py`` checks that the lists agree with the
registries of the lower layers (attack threats, distribution shifts).

Usage::

    from pyro_otmdr.experiments.names import GUIDES, METHODS

    assert "otmdr" in METHODS
"""

from __future__ import annotations

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_RHO",
    "GUIDES",
    "METHODS",
    "MODEL_NAMES",
    "OPTIMIZERS",
    "SCHEDULES",
    "SHIFT_NAMES",
    "THREAT_NAMES",
]

DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10", "cifar100", "fakedata")
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
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")

#: The paper's radius per guide, used when ``rho`` is not given.
DEFAULT_RHO: dict[str, float] = {"delta": 0.05, "ensemble": 0.05, "normal": 0.005}

#: The threats of :func:`pyro_otmdr.robustness`.
THREAT_NAMES: tuple[str, ...] = ("w2-linf", "w2-l2", "linf", "l2")
#: The shifts of :mod:`pyro_otmdr.evaluation.shift`.
SHIFT_NAMES: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "rotation", "contrast")
