"""pyro_otmdr: OT-MDR (optimal-transport model distributional robustness) for Pyro.

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr import OTMDR, SAM
    from pyro_otmdr.bayes import bayesian

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    guide = AutoNormal(model)
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
              loss=OTMDR(Trace_ELBO(), rho=0.05, n_particles=2))
    loss = svi.step(x, y)                      # one OT-MDR step: the robust loss, a float
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=SAM(Trace_ELBO(), rho=0.05))
    loss = svi.step(x, y)                      # one SAM step

The package is layered; each subpackage imports only those listed before it:
:mod:`.bayes` (the Pyro layer), :mod:`.model_space` (OT-MDR and SAM), :mod:`.data_space`
(attacks and data-robust losses), :mod:`.evaluation` (metrics, predictive, ArviZ, plots),
:mod:`.workflow` (the library pieces of a training workflow: data sets, model zoo, epoch loop,
checkpoints, atomic outputs) and, on top, the tooling :mod:`.experiments` (configurations and
the ``otmdr`` command). :mod:`.attacks` gathers the attacks and predictors. The top-level modules
``bayesian``, ``data``, ``models``, ``metrics``, ``checkpoint``, ``optim``, ``training`` and
``distributed`` are deprecated aliases of their new homes, kept for one release.

:func:`robustness` reports clean and robust accuracy of a classifier under Wasserstein and
pointwise attacks; :class:`AdversarialTraining`, :class:`TRADES`, :class:`WDAT` and
:class:`ARMOR` train against them, alone or inside
``OTMDR(...)`` so that one step is robust in model space and data space.

Public names load lazily (PEP 562): ``import pyro_otmdr`` imports no torch or Pyro until a name is
used, so the ``otmdr`` command answers ``--help`` at once. ``__all__``, ``dir()`` and type
checkers see every name as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names

#: Each public name and the module that defines it.
_HOMES = {
    "AutoDeltaEnsemble": "bayes",
    "EnsembleELBO": "bayes",
    "DEFAULT_NOISE_STD": "model_space",
    "OTMDR": "model_space",
    "SAM": "model_space",
    "NonFiniteLossError": "model_space",
    "OTMDROptimizer": "model_space",
    "SAMOptimizer": "model_space",
    "SharpnessAwareStep": "model_space",
    "StepInfo": "model_space",
    "perturbed_by_default": "model_space",
    "AdversarialTraining": "data_space",
    "TRADES": "data_space",
    "WDAT": "data_space",
    "ARMOR": "data_space",
    "EvaluationResult": "evaluation",
    "RobustnessReport": "evaluation",
    "evaluate": "evaluation",
    "robustness": "evaluation",
    "CheckpointError": "workflow.checkpoint",
    "load_checkpoint": "workflow.checkpoint",
    "save_checkpoint": "workflow.checkpoint",
}

__all__ = [
    "ARMOR",
    "DEFAULT_NOISE_STD",
    "OTMDR",
    "SAM",
    "TRADES",
    "WDAT",
    "AdversarialTraining",
    "AutoDeltaEnsemble",
    "CheckpointError",
    "EnsembleELBO",
    "EvaluationResult",
    "NonFiniteLossError",
    "OTMDROptimizer",
    "RobustnessReport",
    "SAMOptimizer",
    "SharpnessAwareStep",
    "StepInfo",
    "evaluate",
    "load_checkpoint",
    "perturbed_by_default",
    "robustness",
    "save_checkpoint",
]


__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .bayes import AutoDeltaEnsemble, EnsembleELBO
    from .data_space import ARMOR, TRADES, WDAT, AdversarialTraining
    from .evaluation import EvaluationResult, RobustnessReport, evaluate, robustness
    from .model_space import (
        DEFAULT_NOISE_STD,
        OTMDR,
        SAM,
        NonFiniteLossError,
        OTMDROptimizer,
        SAMOptimizer,
        SharpnessAwareStep,
        StepInfo,
        perturbed_by_default,
    )
    from .workflow.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
