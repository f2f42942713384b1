"""The result of an attack: robust accuracy, the curve over iterates, and the worst inputs.

Usage::

    import json
    import torch
    from pyro_otmdr.attacks import w_pgd

    predict = torch.nn.Linear(4, 3)
    x, y = torch.rand(16, 4), torch.randint(3, (16,))
    result = w_pgd(predict, x, y, delta=0.05, steps=5)
    assert result.robust_accuracy == min(result.accuracies) and len(result.accuracies) == 5
    text = json.dumps(result.to_dict())     # everything but x_adv
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["AttackResult"]


@dataclass
class AttackResult:
    """What an attack found.

    :ivar robust_accuracy: the attack's upper bound on the accuracy under the threat. For W-PGD
        the minimum over iterates of the accuracy of the whole set (the paper's metric); for
        pointwise PGD the share of examples that no iterate of any restart misclassified.
    :ivar accuracies: one accuracy per iterate (W-PGD: of that iterate; PGD: of the worst input
        per example found so far), in order.
    :ivar losses: the mean attack loss at each iterate.
    :ivar max_loss: W-PGD: the maximum over iterates of the mean loss (tracked independently of
        the accuracy, so it may come from another iterate); PGD: the mean over examples of the
        largest loss any iterate reached.
    :ivar x_adv: the worst inputs: W-PGD's argmin iterate; for PGD, per example, the first
        misclassified iterate or else the highest-loss one. On the device of the input ``x``.
    :ivar distance: the ``W_p`` cost of moving ``x`` to ``x_adv`` (see
        :func:`~pyro_otmdr.data_space.common.w_distance`), in the units of the input box.
    :ivar clean_accuracy: the accuracy on ``x``.
    :ivar clean_loss: the mean attack loss on ``x``.
    :ivar attack: ``"w-pgd"`` or ``"pgd"``.
    :ivar budget: ``delta`` (W-PGD) or ``eps`` (PGD).
    :ivar p: the Wasserstein order (``inf`` for a pointwise attack).
    :ivar cost: the input cost, ``"linf"`` or ``"l2"``.
    :ivar loss: the attack loss, ``"ce"``, ``"dlr"`` or ``"redlr"``.
    :ivar steps: iterates per run (per restart for PGD).
    """

    robust_accuracy: float
    accuracies: list[float]
    losses: list[float]
    max_loss: float
    x_adv: torch.Tensor
    distance: float
    clean_accuracy: float
    clean_loss: float
    attack: str
    budget: float
    p: float
    cost: str
    loss: str
    steps: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Every field but ``x_adv``, JSON-ready (``p = inf`` as the string ``"inf"``)."""
        out = {k: v for k, v in vars(self).items() if k != "x_adv"}
        out["p"] = "inf" if math.isinf(self.p) else self.p
        return out
