"""``pyro_otmdr.optim``: OTMDROptimizer and SAMOptimizer for the torch route.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.model_space.optim`.
"""

from pyro_otmdr.model_space.optim import *  # noqa: F403
from pyro_otmdr.model_space.optim import __all__  # noqa: F401
