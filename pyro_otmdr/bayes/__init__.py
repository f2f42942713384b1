"""The Pyro layer: Bayesian models, the ensemble guide, and posterior draws replayed.

* :mod:`.bnn`: :func:`bayesian` turns an ``nn.Module`` classifier into a Pyro model with priors;
* :mod:`.ensemble`: :class:`AutoDeltaEnsemble` (a uniform mixture of point estimates) and
  :class:`EnsembleELBO`;
* :mod:`.replay`: draws of a guide and the model replayed under them, shared by evaluation and
  the attacks.

This layer imports nothing else from the package.
"""

from .bnn import BayesianClassifier, bayesian
from .ensemble import AutoDeltaEnsemble, EnsembleELBO, is_ensemble

__all__ = ["AutoDeltaEnsemble", "BayesianClassifier", "EnsembleELBO", "bayesian", "is_ensemble"]
