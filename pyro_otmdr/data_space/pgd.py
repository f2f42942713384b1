"""Pointwise PGD (Madry et al., arXiv 1706.06083): every example in its own ``eps``-ball.

Each restart starts at a uniform random point of the ball (or at ``x``), then takes ``steps``
steps ``x <- clamp_box(x0 + proj_eps(x + alpha * d))`` with ``d = sign(g)`` (linf) or
``g / ||g||_2`` (l2), where ``proj_eps`` clips (linf) or shrinks (l2) the move to the ball. An
example counts as broken as soon as any evaluated input (the clean one included) misclassifies
it, so the robust accuracy is the share that no input of any restart broke. It is also a
feasible W attack of every order, so at the same budget the W robust accuracy is no higher
(see the docs, Algorithms: W2 robust accuracy).

With ``random_start=False`` and the linf norm the iterates are exactly those of
:func:`~pyro_otmdr.data_space.wpgd.w_pgd` with ``p = inf`` and the same step.

Usage::

    import torch
    from pyro_otmdr.attacks import pgd

    net = torch.nn.Linear(4, 3)
    x, y = torch.rand(32, 4), torch.randint(3, (32,))
    result = pgd(net, x, y, eps=8 / 255, steps=5, restarts=2)
    assert result.robust_accuracy <= result.clean_accuracy
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from .common import (
    attack_mode,
    check_attack_args,
    check_positive,
    loss_pass,
    point_norms,
    predictor_device,
    w_distance,
)
from .losses import get_loss
from .result import AttackResult
from .wpgd import direction, project

__all__ = ["pgd", "project_to_ball", "uniform_in_ball"]


def uniform_in_ball(x0: torch.Tensor, eps: float, s: float) -> torch.Tensor:
    """A uniform random move in the linf ball (``s = 1``) or the l2 ball (``s = 2``)."""
    if s == 1.0:
        return torch.empty_like(x0).uniform_(-eps, eps)
    normal = torch.randn_like(x0)
    dim = normal[0].numel()
    radius = eps * torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype).pow(1.0 / dim)
    view = (-1, *([1] * (x0.dim() - 1)))
    return normal / point_norms(normal, 2.0).clamp_min(1e-12).reshape(view) * radius.reshape(view)


def project_to_ball(moves: torch.Tensor, eps: float, s: float) -> torch.Tensor:
    """Every example's move clipped (linf, ``s = 1``) or shrunk (l2) into its ``eps``-ball."""
    if s == 1.0:
        return project(moves, delta=eps, q=1.0, s=1.0)
    view = (-1, *([1] * (moves.dim() - 1)))
    norms = point_norms(moves, 2.0).reshape(view)
    return moves * torch.clamp(eps / (norms + 1e-12), max=1.0)


class _Worst:
    """Per example: broken yet, the worst input so far and its loss."""

    def __init__(self, x0: torch.Tensor, correct: torch.Tensor, losses: torch.Tensor) -> None:
        self.broken, self.x, self.loss = ~correct, x0.clone(), losses.clone()

    def update(self, x_t: torch.Tensor, correct: torch.Tensor, losses: torch.Tensor) -> None:
        newly = ~correct & ~self.broken
        higher = ~self.broken & (losses > self.loss)
        take = newly | (higher & correct)
        self.x[take] = x_t[take]
        self.loss = torch.maximum(self.loss, losses)
        self.broken |= newly

    def accuracy(self) -> float:
        return float((~self.broken).double().mean())


def pgd(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 50,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    box: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 256,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> AttackResult:
    """Pointwise PGD with random starts and restarts (see the module docstring).

    :param predict: ``x -> logits`` (or log-probabilities) ``(B, C)``.
    :param x: inputs ``(N, ...)``, finite and inside ``box`` (checked once, at entry).
    :param y: integer labels ``(N,)``.
    :param eps: the radius of every example's ball, in the units of the box.
    :param norm: ``"linf"`` or ``"l2"``.
    :param steps: steps per restart.
    :param step_size: default ``2.5 * eps / steps`` (Madry et al.'s rule).
    :param random_start: start each restart at a uniform random point of the ball.
    :param restarts: independent runs; an example is broken if any run breaks it.
    :param loss: ``"ce"`` (default), ``"dlr"`` or ``"redlr"``.
    :param box: the inputs' box; every iterate is clamped to it.
    :param batch_size: examples per forward/backward pass (memory only).
    :param callback: ``callback(t, x_t)`` after every step, ``t`` counting across restarts.
    :returns: an :class:`AttackResult` with ``p = inf``.
    :raises ValueError: for ``eps <= 0``, an unknown ``norm``/``loss``, ``x`` outside ``box``
        or not finite (naming the first NaN or infinite entry)...

    Usage::

        import torch
        from pyro_otmdr.attacks import pgd

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(32, 4), torch.randint(3, (32,))
        result = pgd(net, x, y, eps=0.1, norm="linf", steps=10, step_size=0.025)
        assert (result.x_adv - x).abs().max() <= 0.1 + 1e-6   # every example in its ball
    """
    _, s = check_attack_args(x, y, budget=("eps", eps), p=math.inf, cost=norm, loss=loss, box=box)
    for name, value in (("steps", steps), ("restarts", restarts), ("batch_size", batch_size)):
        check_positive(name, value, int)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    check_positive("step_size", alpha)
    loss_fn, device = get_loss(loss), predictor_device(predict, x)
    x0, labels = x.detach().to(device), y.detach().to(device).long()
    low, high = float(box[0]), float(box[1])
    with attack_mode(predict):
        run = functools.partial(
            loss_pass, predict, y=labels, loss_fn=loss_fn, batch_size=batch_size
        )
        clean_grads, correct, losses = run(x0, need_grad=True)
        worst = _Worst(x0, correct, losses)
        clean = (float(correct.double().mean()), float(losses.mean()))
        accuracies, means = [], []
        for _ in range(restarts):
            x_t, grads = x0, clean_grads
            if random_start:
                x_t = (x0 + uniform_in_ball(x0, eps, s)).clamp(low, high)
                grads, correct, losses = run(x_t, need_grad=True)
                worst.update(x_t, correct, losses)
            for t in range(1, steps + 1):
                moves = x_t + alpha * direction(grads, q=1.0, s=s) - x0
                x_t = (x0 + project_to_ball(moves, eps, s)).clamp(low, high)
                grads, correct, losses = run(x_t, need_grad=t < steps)
                worst.update(x_t, correct, losses)
                accuracies.append(worst.accuracy())
                means.append(float(losses.mean()))
                if callback is not None:
                    callback(len(accuracies), x_t)
    return AttackResult(
        robust_accuracy=worst.accuracy(),
        accuracies=accuracies,
        losses=means,
        max_loss=float(worst.loss.mean()),
        x_adv=worst.x.to(x.device),
        distance=w_distance(x0, worst.x, p=math.inf, cost=norm),
        clean_accuracy=clean[0],
        clean_loss=clean[1],
        attack="pgd",
        budget=float(eps),
        p=math.inf,
        cost=norm,
        loss=loss,
        steps=steps,
        extra={"restarts": restarts, "random_start": random_start, "step_size": alpha},
    )
