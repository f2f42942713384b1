"""``pyro_otmdr.bayesian``: bayesian(): an nn.Module classifier as a Bayesian Pyro model.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.bayes.bnn`.
"""

from pyro_otmdr.bayes.bnn import *  # noqa: F403
from pyro_otmdr.bayes.bnn import __all__  # noqa: F401
