"""The tooling: experiment configurations and the ``otmdr`` command, on top of the library.

* :mod:`.config`: :class:`ExperimentConfig`, every setting of a run declared once
  (:mod:`.settings`: the kinds of values and the flags built from them);
* :mod:`.builders`: the guide, data-robust loss, loss and optimiser a configuration names;
* :mod:`.experiment`: :func:`build_experiment`, the objects of one run;
* :mod:`.runs`: train, evaluate, attack and shift a run;
* :mod:`.finetune`: a new run that starts from a finished run's parameters;
* :mod:`.names`: the names an experiment is built from, without torch (for the parser);
* :mod:`.cli`: the ``otmdr`` command.

The top layer: it may import every other part of the package. Its names load lazily (PEP 562).
The data sets, models, epoch loop, checkpoints and outputs it once held live in
:mod:`pyro_otmdr.workflow`; ``pyro_otmdr.experiments.data`` and the like are deprecated aliases.

Usage::

    from pyro_otmdr.experiments import run_experiment

    metrics = run_experiment(dataset="digits", guide="delta", method="sam", epochs=1)
    assert metrics["accuracy"] > 0.5
"""

from __future__ import annotations

from .._lazy import lazy_names
from .names import DATA_ROBUST, DEFAULT_RHO, GUIDES, METHODS, OPTIMIZERS, SCHEDULES

#: Each name of the submodules and its module, loaded on first use (``otmdr --help`` imports
#: no torch).
_HOMES = {
    "DEFAULT_LR": "config",
    "RUNTIME_KEYS": "config",
    "ExperimentConfig": "config",
    "DATA_ROBUST_LOSSES": "builders",
    "make_data_robust": "builders",
    "make_guide": "builders",
    "make_loss": "builders",
    "make_optim": "builders",
    "Experiment": "experiment",
    "build_experiment": "experiment",
    "ood_inputs": "experiment",
    "attack_experiment": "runs",
    "evaluate_experiment": "runs",
    "run_experiment": "runs",
    "shift_experiment": "runs",
    "train_experiment": "runs",
    "MODEL_KEYS": "finetune",
    "PARENT_FILE": "finetune",
    "finetune": "finetune",
    "finetune_config": "finetune",
    "last_linear_sites": "finetune",
    "read_parent_record": "finetune",
    "start_from": "finetune",
}

__all__ = [
    "DATA_ROBUST",
    "DEFAULT_RHO",
    "GUIDES",
    "METHODS",
    "OPTIMIZERS",
    "SCHEDULES",
    *_HOMES,
]


__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)
