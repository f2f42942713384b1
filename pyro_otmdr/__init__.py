"""pyro_otmdr: OT-MDR (optimal-transport model distributional robustness) for Pyro.

Usage::

    from pyro.infer import SVI, Trace_ELBO
    from pyro_otmdr import OTMDR, SAM

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
              loss=OTMDR(Trace_ELBO(), rho=0.05, n_particles=2))
"""

from .ensemble import AutoDeltaEnsemble, EnsembleELBO
from .evaluation import EvaluationResult, evaluate
from .otmdr import DEFAULT_NOISE_STD, OTMDR, SAM
from .perturbation import perturbed_by_default
from .step import NonFiniteLossError, SharpnessAwareStep, StepInfo

__all__ = [
    "DEFAULT_NOISE_STD",
    "OTMDR",
    "SAM",
    "AutoDeltaEnsemble",
    "EnsembleELBO",
    "EvaluationResult",
    "NonFiniteLossError",
    "SharpnessAwareStep",
    "StepInfo",
    "evaluate",
    "perturbed_by_default",
]
