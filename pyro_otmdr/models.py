"""``pyro_otmdr.models``: the model zoo: build_model and the paper's families.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.experiments.models`.
"""

from pyro_otmdr.experiments.models import *  # noqa: F403
from pyro_otmdr.experiments.models import __all__  # noqa: F401
