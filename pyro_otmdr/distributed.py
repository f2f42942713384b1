"""``pyro_otmdr.distributed``: DDP helpers for the torch route.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.model_space.distributed`.
"""

from pyro_otmdr.model_space.distributed import *  # noqa: F403
from pyro_otmdr.model_space.distributed import __all__  # noqa: F401
