"""pyro_otmdr: OT-MDR (optimal-transport model distributional robustness) for Pyro.

Usage::

    from pyro.infer import SVI, Trace_ELBO
    from pyro_otmdr import OTMDR, SAM

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
              loss=OTMDR(Trace_ELBO(), rho=0.05, n_particles=2))

The package is layered; each subpackage imports only those listed before it:
:mod:`.bayes` (the Pyro layer), :mod:`.model_space` (OT-MDR and SAM), :mod:`.data_space`
(attacks), :mod:`.evaluation`, :mod:`.experiments`. The top-level modules ``bayesian``, ``data``,
``models``, ``metrics``, ``checkpoint``, ``optim``, ``training``, ``distributed`` and ``attacks``
are stable import paths that re-export them. :func:`robustness` reports clean and robust
accuracy of a classifier under Wasserstein and pointwise attacks.
"""

from .bayes import AutoDeltaEnsemble, EnsembleELBO
from .evaluation import EvaluationResult, RobustnessReport, evaluate, robustness
from .experiments.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
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

__all__ = [
    "DEFAULT_NOISE_STD",
    "OTMDR",
    "SAM",
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
