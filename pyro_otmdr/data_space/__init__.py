"""Data-space robustness: Wasserstein distributional and pointwise attacks on any predictor.

* :mod:`.losses`: per-example attack losses ``ce``, ``dlr``, ``redlr``;
* :mod:`.predictors`: :func:`posterior_predictive`, a Pyro classifier as ``x -> log p(y | x)``;
* :mod:`.wpgd`: :func:`w_pgd` and :func:`w_fgsm`, the W-PGD attack of Bai et al. (2023);
* :mod:`.pgd`: :func:`pgd`, pointwise PGD (Madry et al.);
* :mod:`.autoattack`: :func:`autoattack`, AutoAttack (Croce and Hein) through the optional extra
  ``pyro-otmdr[autoattack]``, imported only when it runs;
* :mod:`.sensitivity`: :func:`w_sensitivity`, the first-order robustness figure ``Upsilon``;
* :mod:`.result`: :class:`AttackResult`;
* :mod:`.armor`: :func:`armor_kl`, the ARMOR_D (KL) dual of per-example losses;
* :mod:`.inner`: the lean inner maximisations of adversarial training;
* :mod:`.objectives`: the training methods in torch terms (attack, then loss on logits), also
  losses for a plain ``nn.Module``: :class:`AdversarialLoss`, :class:`TradesLoss`,
  :class:`WdatLoss`, :class:`ArmorLoss`;
* :mod:`.elbo`: the same as Pyro losses wrapping any ELBO: :class:`AdversarialTraining`,
  :class:`TRADES`, :class:`WDAT`, :class:`ARMOR`, composable with ``OTMDR``;
* :mod:`.common`: the chores shared by the attacks (checks, eval mode, gradient passes).

This layer imports :mod:`pyro_otmdr.bayes` and :mod:`pyro_otmdr.model_space` from the package.

Usage::

    import torch
    from pyro.infer.autoguide import AutoDelta
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.data_space import posterior_predictive, w_pgd

    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = AutoDelta(model)
    x, y = torch.rand(16, 4), torch.randint(3, (16,))
    guide(x, y)                                         # set the autoguide up (or train it)
    result = w_pgd(posterior_predictive(model, guide), x, y, delta=0.05, steps=5)
    assert result.distance <= 0.05 + 1e-6              # within the W2 budget
"""

from .armor import ArmorDual, armor_kl
from .autoattack import autoattack
from .common import COSTS, w_distance
from .elbo import ARMOR, TRADES, WDAT, AdversarialTraining, DataRobustELBO
from .losses import LOSSES, ce, dlr, redlr
from .objectives import (
    AdversarialLoss,
    ArmorLoss,
    RobustObjective,
    TradesLoss,
    WdatLoss,
    kl_to_clean,
)
from .pgd import pgd
from .predictors import PosteriorPredictive, posterior_predictive
from .result import AttackResult
from .sensitivity import Sensitivity, w_sensitivity
from .wpgd import w_fgsm, w_pgd

__all__ = [
    "ARMOR",
    "COSTS",
    "LOSSES",
    "TRADES",
    "WDAT",
    "AdversarialLoss",
    "AdversarialTraining",
    "ArmorDual",
    "ArmorLoss",
    "AttackResult",
    "DataRobustELBO",
    "PosteriorPredictive",
    "RobustObjective",
    "Sensitivity",
    "TradesLoss",
    "WdatLoss",
    "armor_kl",
    "autoattack",
    "ce",
    "dlr",
    "kl_to_clean",
    "pgd",
    "posterior_predictive",
    "redlr",
    "w_distance",
    "w_fgsm",
    "w_pgd",
    "w_sensitivity",
]
