"""pyro_otmdr: OT-MDR (optimal-transport model distributional robustness) for Pyro.

Usage::

    from pyro.infer import SVI, Trace_ELBO
    from pyro_otmdr import OTMDR, SAM

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
              loss=OTMDR(Trace_ELBO(), rho=0.05, n_particles=2))
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ensemble import AutoDeltaEnsemble, EnsembleELBO
from .evaluation import EvaluationResult, evaluate
from .optim import OTMDROptimizer, SAMOptimizer
from .otmdr import DEFAULT_NOISE_STD, OTMDR, SAM
from .perturbation import perturbed_by_default
from .step import NonFiniteLossError, SharpnessAwareStep, StepInfo

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
    "SAMOptimizer",
    "SharpnessAwareStep",
    "StepInfo",
    "evaluate",
    "load_checkpoint",
    "perturbed_by_default",
    "save_checkpoint",
]
