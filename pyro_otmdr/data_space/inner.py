"""The inner maximisation of adversarial training: lean ascents on one minibatch.

The attacks of :mod:`.pgd` and :mod:`.wpgd` evaluate: they keep the worst iterate of a whole test
set and its accuracy. Training needs less and must be cheap: the last iterate of a few steps on
one minibatch, with no bookkeeping and no device synchronisation. Each function here ascends a
per-example loss ``loss_fn(x') -> (B,)`` (its gradient is taken from the *sum*, so it carries no
``1/B``) and returns the adversarial inputs, detached:

* :func:`ball_ascent`: pointwise PGD, every example in its own ``eps``-ball (Madry et al.; the
  TRADES inner loop with ``start="normal"``);
* :func:`w_ball_ascent`: W-PGD on the minibatch as one distribution within ``W_2 <= delta``,
  with the batch-level normalisation and the authors' map onto the ball (see the docs,
  Algorithms: W-PGD);
* :func:`batch_sensitivity`: ``Upsilon_B = (mean_i ||g_i||_s^2)^(1/2)``, the minibatch's
  first-order W2 sensitivity, which sets WDAT's per-batch budget.

Random starts use torch's global generator, so ``pyro.set_rng_seed`` makes them repeatable.

Usage::

    import torch
    from pyro_otmdr.data_space.inner import ball_ascent
    from pyro_otmdr.data_space.losses import ce

    net = torch.nn.Linear(4, 3)
    x, y = torch.rand(8, 4), torch.randint(3, (8,))
    x_adv = ball_ascent(lambda z: ce(net(z), y), x, eps=0.1, steps=10, step_size=0.025)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6          # every example in its own ball
    assert ce(net(x_adv), y).mean() >= ce(net(x), y).mean()
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import point_norms
from .pgd import project_to_ball, uniform_in_ball
from .wpgd import direction, project

__all__ = ["START_STD", "ball_ascent", "batch_sensitivity", "w_ball_ascent"]

LossFn = Callable[[torch.Tensor], torch.Tensor]

START_STD = 1e-3
"""Standard deviation of TRADES' start ``x + 0.001 N(0, I)`` (its KL has zero gradient at x)."""


def _input_grad(loss_fn: LossFn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(x).sum(), x)
    return grad


def _start(x0: torch.Tensor, start: str, eps: float, s: float) -> torch.Tensor:
    if start == "uniform":
        return x0 + uniform_in_ball(x0, eps, s)
    if start == "normal":
        return x0 + START_STD * torch.randn_like(x0)
    return x0


def ball_ascent(
    loss_fn: LossFn,
    x: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    s: float = 1.0,
    start: str = "uniform",
    box: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Pointwise PGD: ``steps`` steps of ``step_size`` along ``sign(g)`` (``s = 1``, linf) or
    ``g / ||g||_2`` (``s = 2``), each move clipped to the ``eps``-ball, then clamped to ``box``.

    :param start: ``"uniform"`` in the ball (Madry), ``"normal"`` (TRADES) or ``"none"``.
    """
    x0 = x.detach()
    x_t = _start(x0, start, eps, s).clamp(*box)
    for _ in range(steps):
        moves = x_t + step_size * direction(_input_grad(loss_fn, x_t), q=1.0, s=s) - x0
        x_t = (x0 + project_to_ball(moves, eps, s)).clamp(*box)
    return x_t.detach()


def w_ball_ascent(
    loss_fn: LossFn,
    x: torch.Tensor,
    *,
    delta: float,
    steps: int,
    step_ratio: float = 1.875,
    s: float = 1.0,
    start: str = "normal",
    box: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """W-PGD inside one minibatch: ``W_2(x, x') <= delta`` for the batch as a distribution.

    Starts at TRADES' ``x + 0.001 N(0, I)`` (``start="normal"``, for a KL ascent, whose gradient
    vanishes at ``x``) or at ``x`` itself (``"none"``, W-PGD's start), then takes ``steps`` steps
    of ``step_ratio * delta / steps`` along the W-PGD direction, normalised over the batch, each
    followed by the authors' map onto the ball and the clamp. An example with no gradient along
    the way does not move.
    """
    x0 = x.detach()
    x_t = _start(x0, start, delta, s).clamp(*box)
    for _ in range(steps):
        moves = x_t + step_ratio * delta / steps * direction(_input_grad(loss_fn, x_t), q=2.0, s=s)
        x_t = (x0 + project(moves - x0, delta=delta, q=2.0, s=s)).clamp(*box)
    return x_t.detach()


def batch_sensitivity(loss_fn: LossFn, x: torch.Tensor, *, s: float = 1.0) -> torch.Tensor:
    """``Upsilon_B = (mean_i ||grad_x loss_i||_s^2)^(1/2)``, a 0-d tensor (W2; ``s = 1`` for the
    linf cost, 2 for l2): the rate at which the batch's mean loss can grow per unit of W2 budget.
    """
    return point_norms(_input_grad(loss_fn, x), s).square().mean().sqrt()
