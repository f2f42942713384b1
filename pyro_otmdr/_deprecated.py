"""Old import paths kept for one release: importing one warns and gives the module's new home.

Usage (the whole of a deprecated module)::

    from pyro_otmdr._deprecated import moved

    moved(__name__, "pyro_otmdr.workflow.data")
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

__all__ = ["moved"]

_PACKAGE = str(Path(__file__).resolve().parent)


def moved(old: str, new: str) -> None:
    """Warn that module ``old`` is deprecated, then make ``old`` the module ``new`` itself (one
    object under two names: patching one patches the other)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; import {new} instead",
        DeprecationWarning,
        skip_file_prefixes=(_PACKAGE, "<frozen importlib"),  # point at the user's import
    )
    sys.modules[old] = importlib.import_module(new)
