"""``pyro_otmdr.training``: the epoch loop.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.experiments.training`.
"""

from pyro_otmdr.experiments.training import *  # noqa: F403
from pyro_otmdr.experiments.training import __all__  # noqa: F401
