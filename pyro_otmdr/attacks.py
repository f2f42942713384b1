"""``pyro_otmdr.attacks``: Wasserstein distributional and pointwise attacks, and the predictors.

The public home of the attacks (the implementation lives in :mod:`pyro_otmdr.data_space`).

Usage::

    import torch
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.attacks import posterior_predictive, w_pgd
    from pyro_otmdr.bayes import bayesian

    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = AutoNormal(model)
    x, y = torch.rand(16, 4), torch.randint(3, (16,))   # inputs in the box [0, 1]
    guide(x, y)                                         # set the autoguide up (or train it)
    predict = posterior_predictive(model, guide, num_samples=8)
    result = w_pgd(predict, x, y, delta=0.05, steps=5)
    assert result.robust_accuracy <= result.clean_accuracy
"""

from pyro_otmdr.data_space import *  # noqa: F403
from pyro_otmdr.data_space import __all__  # noqa: F401
