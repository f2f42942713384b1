"""Deprecated alias of :mod:`pyro_otmdr.workflow.checkpoint`, kept for one release."""

from .._deprecated import moved

moved(__name__, "pyro_otmdr.workflow.checkpoint")
