"""Deprecated alias of :mod:`pyro_otmdr.workflow.models`, kept for one release."""

from pyro_otmdr._deprecated import moved

moved(__name__, "pyro_otmdr.workflow.models")
