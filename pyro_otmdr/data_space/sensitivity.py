"""First-order W sensitivity: ``V(delta) ~ V(0) + delta * Upsilon`` without an attack.

For the loss ``J``, the value of the ``W_p`` adversary is ``V(delta) = V(0) + delta * Upsilon +
o(delta)`` with ``Upsilon = (mean_i ||grad_x J(x_i, y_i)||_s^q)^(1/q)`` (``s``, ``q`` the dual
exponents of the cost norm and of ``p``; Bartl, Drapeau, Obloj and Wiesel, arXiv 2006.12022;
Bai et al. 2023). One gradient pass gives a robustness figure that needs no attack.

Usage::

    import torch
    from pyro_otmdr.attacks import w_sensitivity

    net = torch.nn.Linear(4, 3)
    x, y = torch.rand(16, 4), torch.randint(3, (16,))
    sens = w_sensitivity(net, x, y, p=2, cost="linf")
    assert sens.loss_estimate(0.01) == sens.loss + 0.01 * sens.upsilon   # V(0) + delta Upsilon
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .common import (
    attack_mode,
    check_attack_args,
    check_positive,
    loss_pass,
    point_norms,
    predictor_device,
)
from .losses import get_loss

__all__ = ["Sensitivity", "w_sensitivity"]


@dataclass(frozen=True)
class Sensitivity:
    """Clean statistics and the first-order sensitivity of the mean loss.

    :ivar accuracy: clean accuracy ``A(0)``.
    :ivar loss: mean loss ``V(0)``.
    :ivar loss_misclassified: mean loss over the misclassified examples ``W(0)`` (``nan`` when
        there are none).
    :ivar upsilon: ``Upsilon``, the rate of growth of the worst mean loss with ``delta``.
    :ivar p: the Wasserstein order (2 or ``inf``).
    :ivar cost: the input cost.
    :ivar loss_name: the loss.
    """

    accuracy: float
    loss: float
    loss_misclassified: float
    upsilon: float
    p: float
    cost: str
    loss_name: str

    def loss_estimate(self, delta: float) -> float:
        """``V(0) + delta * Upsilon``, the first-order worst mean loss at budget ``delta``."""
        return self.loss + delta * self.upsilon

    def accuracy_estimate(self, delta: float) -> float:
        """``A(0) - delta * Upsilon / W(0)``: a diagnostic, reconstructed (see the docs, Algorithms:
        First-order sensitivity).

        It assumes the loss is about ``W(0)`` on misclassified examples and about 0 on correct
        ones (CE on a confident network); it is meaningless for ReDLR, where ``W(0) = 0``.
        """
        if not self.loss_misclassified > 0:
            return math.nan
        return self.accuracy - delta * self.upsilon / self.loss_misclassified


def w_sensitivity(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    p: float | str = 2,
    cost: str = "linf",
    loss: str = "ce",
    batch_size: int = 256,
    box: tuple[float, float] = (0.0, 1.0),
) -> Sensitivity:
    """``A(0)``, ``V(0)``, ``W(0)`` and ``Upsilon`` of ``predict`` on ``(x, y)``: one gradient pass.

    :param predict: ``x -> logits`` (or log-probabilities) ``(B, C)``.
    :param x: inputs ``(N, ...)``, finite and inside ``box`` (checked once, at entry).
    :param y: integer labels ``(N,)``.
    :param p: the Wasserstein order, 2 or ``inf`` (then ``Upsilon = mean_i ||g_i||_s``).
    :param cost: ``"linf"`` (gradient norms in l1) or ``"l2"``.
    :param loss: ``"ce"`` (default), ``"dlr"`` or ``"redlr"``.
    :param batch_size: examples per pass (memory only).
    :param box: the inputs' box (checked only).

    Usage::

        import torch
        from pyro_otmdr.attacks import w_sensitivity

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(16, 4), torch.randint(3, (16,))
        sens = w_sensitivity(net, x, y)
        print(sens.upsilon, sens.loss_estimate(0.05))   # e.g. 0.546 1.022: Upsilon, V(0.05)
        assert sens.loss_estimate(0.05) > sens.loss     # the worst loss grows with delta
    """
    order, s = check_attack_args(x, y, budget=("delta", 1.0), p=p, cost=cost, loss=loss, box=box)
    check_positive("batch_size", batch_size, int)
    q = 1.0 if math.isinf(order) else 2.0
    device = predictor_device(predict, x)
    x0, labels = x.detach().to(device), y.detach().to(device).long()
    with attack_mode(predict):
        grads, correct, losses = loss_pass(
            predict, x0, labels, get_loss(loss), batch_size=batch_size, need_grad=True
        )
    norms = point_norms(grads.double(), s)
    wrong = losses[~correct]
    return Sensitivity(
        accuracy=float(correct.double().mean()),
        loss=float(losses.mean()),
        loss_misclassified=float(wrong.mean()) if wrong.numel() else math.nan,
        upsilon=float(norms.pow(q).mean().pow(1.0 / q)),
        p=order,
        cost=cost,
        loss_name=loss,
    )
