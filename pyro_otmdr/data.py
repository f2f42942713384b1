"""``pyro_otmdr.data``: the data sets: digits, CIFAR-10/100, FakeData.

A stable import path for user code; the implementation lives in
:mod:`pyro_otmdr.experiments.data`.
"""

from pyro_otmdr.experiments.data import *  # noqa: F403
from pyro_otmdr.experiments.data import __all__  # noqa: F401
