"""The model-space method: OT-MDR and SAM.

Bottom up:

* :mod:`.core`: the pure tensor core (global norm, ascent move, noise, snapshot/restore);
* :mod:`.batching`, :mod:`.perturbation`, :mod:`.running_stats`, :mod:`.reparam_noise`: the
  random half batches, which parameters move, BatchNorm statistics once per step, kappa fixed
  for the step; :mod:`.subsampling`: whether a Pyro loss is plate-scaled, so that two halves
  average to the whole batch;
* :mod:`.step`: :class:`SharpnessAwareStep`, the Pyro-agnostic step engine (the paper's
  algorithm), :mod:`.center_gradient`: the gradient of the parameters it does not perturb, and
  :mod:`.savings`: :class:`StepSavings`, its exact shortcuts, each one a switch;
* :mod:`.constant_params` and :mod:`.device_loss`: what a Pyro pass need not redo (the fixed
  parameters' constrained values where they are constants) or convert (its loss, kept on the
  device);
* two front ends on that one engine: :mod:`.elbo` (:class:`OTMDR` and :class:`SAM`, wrapper
  ELBOs for an unchanged Pyro ``SVI``) and :mod:`.optim` (:class:`OTMDROptimizer` and
  :class:`SAMOptimizer` for ``ELBOModule``/``nn.Module`` training), with :mod:`.distributed`
  for DDP and :mod:`.jit` for Pyro's jit ELBOs (one compiled graph per kind of pass and batch
  shape).

It imports only :mod:`pyro_otmdr.bayes` (the ensemble guide, trained member by member).
"""

from .elbo import DEFAULT_NOISE_STD, OTMDR, SAM
from .optim import OTMDROptimizer, SAMOptimizer
from .perturbation import perturbed_by_default
from .savings import StepSavings
from .step import NonFiniteLossError, SharpnessAwareStep, StepInfo

__all__ = [
    "DEFAULT_NOISE_STD",
    "OTMDR",
    "SAM",
    "NonFiniteLossError",
    "OTMDROptimizer",
    "SAMOptimizer",
    "SharpnessAwareStep",
    "StepInfo",
    "StepSavings",
    "perturbed_by_default",
]
