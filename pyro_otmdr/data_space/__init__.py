"""Data-space robustness: Wasserstein distributional and pointwise attacks on any predictor.

* :mod:`.losses`: per-example attack losses ``ce``, ``dlr``, ``redlr``;
* :mod:`.predictors`: :func:`posterior_predictive`, a Pyro classifier as ``x -> log p(y | x)``;
* :mod:`.wpgd`: :func:`w_pgd` and :func:`w_fgsm`, the W-PGD attack of Bai et al. (2023);
* :mod:`.pgd`: :func:`pgd`, pointwise PGD (Madry et al.);
* :mod:`.sensitivity`: :func:`w_sensitivity`, the first-order robustness figure ``Upsilon``;
* :mod:`.result`: :class:`AttackResult`;
* :mod:`.armor`: ``armor_kl``, the ARMOR_D (KL) dual of per-example losses, the functional core
  of the robust training losses to come;
* :mod:`.common`: the chores shared by the attacks (checks, eval mode, gradient passes).

This layer imports only :mod:`pyro_otmdr.bayes` from the package.

Usage::

    from pyro_otmdr.data_space import posterior_predictive, w_pgd

    result = w_pgd(posterior_predictive(model, guide), x, y, delta=0.05)
"""

from .common import COSTS, w_distance
from .losses import LOSSES, ce, dlr, redlr
from .pgd import pgd
from .predictors import PosteriorPredictive, posterior_predictive
from .result import AttackResult
from .sensitivity import Sensitivity, w_sensitivity
from .wpgd import w_fgsm, w_pgd

__all__ = [
    "COSTS",
    "LOSSES",
    "AttackResult",
    "PosteriorPredictive",
    "Sensitivity",
    "ce",
    "dlr",
    "pgd",
    "posterior_predictive",
    "redlr",
    "w_distance",
    "w_fgsm",
    "w_pgd",
    "w_sensitivity",
]
