"""``pyro_otmdr.metrics``: accuracy, NLL, Brier, ECE, AUROC and temperature scaling.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.evaluation.metrics`.
"""

from pyro_otmdr.evaluation.metrics import *  # noqa: F403
from pyro_otmdr.evaluation.metrics import __all__  # noqa: F401
