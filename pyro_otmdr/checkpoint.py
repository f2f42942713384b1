"""``pyro_otmdr.checkpoint``: atomic, verified training checkpoints.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.experiments.checkpoint`.
"""

from pyro_otmdr.experiments.checkpoint import *  # noqa: F403
from pyro_otmdr.experiments.checkpoint import __all__  # noqa: F401
