"""The threats of :func:`~pyro_otmdr.robustness` and ``otmdr attack``, registered once.

A threat is the geometry of its budget (a Wasserstein order ``p``, ``inf`` for a pointwise ball,
and a ground cost; Upsilon, the first-order sensitivity, is measured in it) and the attack that
realises it, named ``"module:function"`` and imported when a report runs it. This module
imports no torch, so the ``otmdr`` parser lists the threats without loading the libraries.

An attack of a threat is ``run(predict, x, y, budget, threat, options, callback) ->
AttackResult``: ``options`` are :func:`~pyro_otmdr.robustness`'s (``steps``, ``w_loss``,
``pgd_loss``, ``restarts``, ``batch_size``), ``callback`` counts the iterates for the progress
bar. A new attack is its function in its own module and one line here.

Usage::

    from pyro_otmdr.evaluation.threats import THREATS

    assert THREATS["w2-linf"].order == 2 and THREATS["linf"].pointwise
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
    """One threat: the budget's geometry and the attack, as ``"module:function"``."""

    order: float
    cost: str
    attack: str

    @property
    def pointwise(self) -> bool:
        """A ball around each example (``order`` infinite) rather than a Wasserstein ball."""
        return math.isinf(self.order)

    def iterates(self, options: dict[str, Any]) -> int:
        """The iterates one attack at one budget takes (restarts count for a pointwise one)."""
        return options["steps"] * (options["restarts"] if self.pointwise else 1)

    def runner(self) -> Callable[..., Any]:
        """The attack function (imported on first use)."""
        module, _, name = self.attack.partition(":")
        return getattr(importlib.import_module(module), name)


_W_PGD = "pyro_otmdr.evaluation.robustness:run_w_pgd"
_PGD = "pyro_otmdr.evaluation.robustness:run_pgd"

#: threat -> :class:`Threat`. W-PGD (Bai et al.) in a ``W_2`` ball for the Wasserstein threats,
#: PGD (Madry et al.) for the pointwise ones.
THREATS: dict[str, Threat] = {
    "w2-linf": Threat(2.0, "linf", _W_PGD),
    "w2-l2": Threat(2.0, "l2", _W_PGD),
    "linf": Threat(math.inf, "linf", _PGD),
    "l2": Threat(math.inf, "l2", _PGD),
}
