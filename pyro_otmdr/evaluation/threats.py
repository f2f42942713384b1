"""The threats of :func:`~pyro_otmdr.robustness` and ``otmdr attack``, registered once.

A threat is the geometry of its budget (a Wasserstein order ``p``, ``inf`` for a pointwise ball,
and a ground cost; Upsilon, the first-order sensitivity, is measured in it) and the attack that
realises it, named ``"module:function"`` and imported when a report runs it. This module
imports no torch, so the ``otmdr`` parser lists the threats without loading the libraries.

An attack of a threat is ``run(predict, x, y, budget, threat, options, callback) ->
AttackResult``: ``options`` are :func:`~pyro_otmdr.robustness`'s (``steps``, ``w_loss``,
``pgd_loss``, ``restarts``, ``batch_size``), ``callback`` counts the iterates for the progress
bar. A new attack is its function in its own module and one line here. An attack that needs an
optional extra names, in ``requires``, a ``"module:function"`` that raises an ``ImportError``
naming the install command when the extra is missing; the report calls it before any attack
runs, so that a missing extra fails at once.

Usage::

    from pyro_otmdr.evaluation.threats import THREATS

    assert THREATS["w2-linf"].order == 2 and THREATS["linf"].pointwise
    assert THREATS["autoattack-linf"].requires is not None   # the optional extra autoattack
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["THREATS", "Threat"]


@dataclass(frozen=True)
class Threat:
    """One threat: the budget's geometry and the attack, as ``"module:function"``; ``requires``
    names the check of an optional dependency, as ``"module:function"``, or is ``None``."""

    order: float
    cost: str
    attack: str
    requires: str | None = None

    @property
    def pointwise(self) -> bool:
        """A ball around each example (``order`` infinite) rather than a Wasserstein ball."""
        return math.isinf(self.order)

    def iterates(self, options: dict[str, Any]) -> int:
        """The iterates one attack at one budget takes (restarts count for a pointwise one)."""
        return options["steps"] * (options["restarts"] if self.pointwise else 1)

    def runner(self) -> Callable[..., Any]:
        """The attack function (imported on first use)."""
        return _function(self.attack)

    def check_installed(self) -> None:
        """Raise the ``ImportError`` of ``requires`` if the attack's optional extra is missing."""
        if self.requires is not None:
            _function(self.requires)()


def _function(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_W_PGD = "pyro_otmdr.evaluation.robustness:run_w_pgd"
_PGD = "pyro_otmdr.evaluation.robustness:run_pgd"
_AUTOATTACK = "pyro_otmdr.evaluation.robustness:run_autoattack"
_PYAUTOATTACK = "pyro_otmdr.data_space.autoattack:import_pyautoattack"

#: threat -> :class:`Threat`. W-PGD (Bai et al.) in a ``W_2`` ball for the Wasserstein threats,
#: PGD (Madry et al.) for the pointwise ones, and AutoAttack (Croce and Hein, the optional extra
#: ``pyro-otmdr[autoattack]``) in the same pointwise balls.
THREATS: dict[str, Threat] = {
    "w2-linf": Threat(2.0, "linf", _W_PGD),
    "w2-l2": Threat(2.0, "l2", _W_PGD),
    "linf": Threat(math.inf, "linf", _PGD),
    "l2": Threat(math.inf, "l2", _PGD),
    "autoattack-linf": Threat(math.inf, "linf", _AUTOATTACK, requires=_PYAUTOATTACK),
    "autoattack-l2": Threat(math.inf, "l2", _AUTOATTACK, requires=_PYAUTOATTACK),
}
