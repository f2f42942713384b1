"""The Pyro layer: Bayesian models, the ensemble guide, and posterior draws replayed.

* :mod:`.bnn`: :func:`bayesian` turns an ``nn.Module`` classifier (or regressor,
  :class:`BayesianRegressor`) into a Pyro model with priors;
* :mod:`.ensemble`: :class:`AutoDeltaEnsemble` (a uniform mixture of point estimates) and
  :class:`EnsembleELBO`; :mod:`.members`: what an ensemble guide is (:func:`is_ensemble`) and
  running a loss once per member;
* :mod:`.wrapper`: :class:`WrapperELBO`, the base of every ELBO that wraps another (delegation,
  ensemble members, nested state), and :class:`PreparesStep`, a loss that prepares each step;
* :mod:`.replay`: draws of a guide and the model replayed under them, shared by evaluation and
  the attacks.

This layer imports nothing else from the package.
"""

from .bnn import BayesianClassifier, BayesianRegressor, bayesian
from .ensemble import AutoDeltaEnsemble, EnsembleELBO
from .members import is_ensemble
from .wrapper import PreparesStep, WrapperELBO

__all__ = [
    "AutoDeltaEnsemble",
    "BayesianClassifier",
    "BayesianRegressor",
    "EnsembleELBO",
    "PreparesStep",
    "WrapperELBO",
    "bayesian",
    "is_ensemble",
]
