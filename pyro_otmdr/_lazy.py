"""Names of a package loaded on first use (PEP 562), so importing it imports no torch.

Usage (in a package's ``__init__.py``)::

    from pyro_otmdr._lazy import lazy_names

    _HOMES = {"evaluate": "predictive"}          # name -> the submodule that defines it
    __getattr__, __dir__ = lazy_names(__name__, _HOMES, ["evaluate"])
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, homes: dict[str, str], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: a name of ``homes`` is read
    from ``package.<home>`` on first use and kept in the package (later lookups skip this).

    A public name that is also the name of its own submodule (``evaluation.robustness``, the
    function of ``evaluation/robustness.py``) stays the function once the submodule is
    imported, as an eager ``from .robustness import robustness`` would leave it.
    """
    _keep_names_over_submodules(sys.modules[package], homes)

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__


def _keep_names_over_submodules(module: types.ModuleType, homes: dict[str, str]) -> None:
    """Make the import system's ``setattr(package, "x", <module package.x>)`` store the name
    ``x`` of that submodule instead, for each public ``x`` that lives in a submodule ``x``."""
    shadowed = {name for name, home in homes.items() if home == name}
    if not shadowed:
        return

    class _Package(type(module)):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in shadowed and isinstance(value, types.ModuleType):
                value = getattr(value, name)
            super().__setattr__(name, value)

    module.__class__ = _Package
