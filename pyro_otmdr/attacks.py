"""``pyro_otmdr.attacks``: Wasserstein distributional and pointwise attacks, and the predictors.

The public home of the attacks (the implementation lives in :mod:`pyro_otmdr.data_space`).

Usage::

    from pyro_otmdr.attacks import posterior_predictive, pgd, w_pgd, w_sensitivity

    result = w_pgd(posterior_predictive(model, guide), x, y, delta=0.05)
"""

from pyro_otmdr.data_space import *  # noqa: F403
from pyro_otmdr.data_space import __all__  # noqa: F401
