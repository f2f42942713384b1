"""The tooling: experiment configurations and the ``otmdr`` command, on top of the library.

* :mod:`.config`: :class:`ExperimentConfig` to a built, trained and evaluated experiment;
* :mod:`.names`: the names an experiment is built from, without torch (for the parser);
* :mod:`.cli`: the ``otmdr`` command.

The top layer: it may import every other part of the package. Its names load lazily (PEP 562).
The data sets, models, epoch loop, checkpoints and outputs it once held live in
:mod:`pyro_otmdr.workflow`; ``pyro_otmdr.experiments.data`` and the like are deprecated aliases.

Usage::

    from pyro_otmdr.experiments import run_experiment

    metrics = run_experiment(dataset="digits", guide="normal", method="otmdr", epochs=30)
"""

from __future__ import annotations

import importlib
from typing import Any

from .names import DATA_ROBUST, DEFAULT_RHO, GUIDES, METHODS, OPTIMIZERS, SCHEDULES

#: The names of :mod:`.config`, loaded on first use so that ``otmdr --help`` imports no torch.
_CONFIG_NAMES = (
    "DATA_ROBUST_LOSSES",
    "RUNTIME_KEYS",
    "Experiment",
    "ExperimentConfig",
    "attack_experiment",
    "build_experiment",
    "evaluate_experiment",
    "make_data_robust",
    "make_guide",
    "make_loss",
    "make_optim",
    "run_experiment",
    "shift_experiment",
    "train_experiment",
)

__all__ = [
    "DATA_ROBUST",
    "DEFAULT_RHO",
    "GUIDES",
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    *_CONFIG_NAMES,
]


def __getattr__(name: str) -> Any:
    if name not in _CONFIG_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.config"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
