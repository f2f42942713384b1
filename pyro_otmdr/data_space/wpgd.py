"""W-PGD: the Wasserstein distributional attack of Bai, He, Jiang and Obloj (NeurIPS 2023).

The whole ``x`` is ONE distribution: W-PGD moves it within the ball ``W_p(P, Q) <= delta``
(labels fixed, cost ``||x - x'||_r``) and reports the lowest accuracy of the whole set over its
iterates. Each iterate (derived in the docs, Algorithms: W-PGD):

1. ``g_i``, the input gradient of the per-example loss at every example (in chunks of
   ``batch_size``, which only bounds memory);
2. the direction ``d_i = sign(g_i) |g_i|^(s-1) (||g_i||_s + 1e-8)^(q-s)``, divided for ``p = 2``
   by the dataset-level size ``(mean_i ||d_i||_r^2)^(1/2) + 1e-8`` (``s``, ``q`` the dual
   exponents of the cost norm ``r`` and of ``p``): for W2-linf each example takes an FGSM sign
   step scaled by its gradient's l1 norm relative to the RMS over the set;
3. a constant step ``step_ratio * delta / steps`` along ``d``;
4. the authors' contraction onto the ball: with ``D = (mean_i ||x'_i - x_i||_r^2)^(1/2)`` and
   ``rho = min(1, delta / (D + 1e-8))``, the l2 cost scales every move by ``rho``, the linf cost
   clips every coordinate of move ``i`` to ``rho ||x'_i - x_i||_inf``; for ``p = inf`` the linf
   cost clips to ``delta`` (pointwise PGD) and the l2 cost sets every move to norm ``delta``
   (the authors' choice, which also expands moves inside the ball);
5. the clamp to ``box``, which can only shorten moves, so every iterate stays feasible;
6. the accuracy and mean loss of the whole set at the new iterate.

``p = inf`` is pointwise PGD without a random start. This is a map onto the feasible set, not a
Euclidean projection; it is the authors' and reproduces their numbers.

Usage::

    import torch
    from pyro_otmdr.attacks import w_pgd

    net = torch.nn.Linear(4, 3)
    x_test, y_test = torch.rand(32, 4), torch.randint(3, (32,))
    result = w_pgd(net, x_test, y_test, delta=8 / 255)   # W2, linf cost, ReDLR, 50 steps
    assert result.robust_accuracy <= result.clean_accuracy and result.distance <= 8 / 255
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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

__all__ = ["direction", "project", "w_fgsm", "w_pgd"]

Callback = Callable[[int, torch.Tensor], None]


def _cost_norm(s: float) -> float:
    return math.inf if s == 1.0 else 2.0


def direction(grads: torch.Tensor, *, q: float, s: float) -> torch.Tensor:
    """The W-PGD direction of every example: unit dataset-level size for ``q = 2``.

    :param grads: per-example input gradients ``(N, ...)``.
    :param q: dual exponent of the Wasserstein order (2 for ``p = 2``, 1 for ``p = inf``).
    :param s: dual exponent of the cost (1 for linf, 2 for l2).
    """
    size = point_norms(grads, s).add(1e-8).pow(q - s)
    size = size.reshape(-1, *([1] * (grads.dim() - 1)))
    shape = grads.sign() if s == 1.0 else grads.sign() * grads.abs().pow(s - 1.0)
    d = shape * size
    if q == 1.0:
        return d
    scale = point_norms(d, _cost_norm(s)).square().mean().sqrt().add(1e-8)
    return d / scale


def project(moves: torch.Tensor, *, delta: float, q: float, s: float) -> torch.Tensor:
    """The authors' map of the moves ``x' - x`` into the ball of radius ``delta``."""
    view = (-1, *([1] * (moves.dim() - 1)))
    if q == 1.0:
        if s == 1.0:
            return moves.clamp(-delta, delta)
        norms = point_norms(moves, 2.0).add(1e-8).reshape(view)
        return moves * (delta / norms)
    r = _cost_norm(s)
    total = point_norms(moves, r).square().mean().sqrt()
    rho = torch.clamp(delta / (total + 1e-8), max=1.0)
    if s == 2.0:
        return moves * rho
    radius = (rho * point_norms(moves, math.inf)).reshape(view)
    return torch.maximum(torch.minimum(moves, radius), -radius)


def _check_schedule(steps: Any, step_ratio: Any, batch_size: Any) -> None:
    check_positive("steps", steps, int)
    check_positive("step_ratio", step_ratio)
    check_positive("batch_size", batch_size, int)


def w_pgd(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    delta: float,
    p: float | str = 2,
    cost: str = "linf",
    loss: str = "redlr",
    steps: int = 50,
    step_ratio: float = 1.875,
    batch_size: int = 256,
    box: tuple[float, float] = (0.0, 1.0),
    callback: Callback | None = None,
) -> AttackResult:
    """The W-PGD attack on the whole of ``x`` as one distribution (see the module docstring).

    The predictor runs in eval mode (its modes are restored after); ``x`` is not modified, and
    gradients are taken with respect to the inputs only, so no parameter gets a ``.grad``.

    :param predict: ``x -> logits`` (or log-probabilities) ``(B, C)``: an ``nn.Module``, a
        :func:`~pyro_otmdr.attacks.posterior_predictive`, any callable.
    :param x: inputs ``(N, ...)``, finite and inside ``box`` (checked once, at entry).
    :param y: integer labels ``(N,)``.
    :param delta: the budget: a ``W_p`` distance in the units of the box (for pixels in
        ``[0, 1]`` and the linf cost, ``8 / 255`` is the usual CIFAR radius).
    :param p: the Wasserstein order, 2 or ``inf``.
    :param cost: the input cost, ``"linf"`` or ``"l2"``.
    :param loss: the loss ascended, ``"redlr"`` (default, as the authors), ``"dlr"`` or ``"ce"``.
    :param steps: iterates (50 in the paper).
    :param step_ratio: the path length in units of ``delta``; each step is
        ``step_ratio * delta / steps``.
    :param batch_size: examples per forward/backward pass (memory only; results do not depend
        on it beyond floating-point rounding).
    :param box: the inputs' box; every iterate is clamped to it.
    :param callback: ``callback(t, x_t)`` after iterate ``t = 1..steps`` (do not modify ``x_t``).
    :returns: an :class:`AttackResult`; ``robust_accuracy`` is the minimum over iterates.
    :raises ValueError: for ``delta <= 0``, an unknown ``p``/``cost``/``loss``, DLR with fewer
        than 3 classes, ``x`` outside ``box`` or not finite (naming the first NaN or infinite
        entry), or ``x`` and ``y`` of different lengths.

    Usage::

        import torch
        from pyro_otmdr.attacks import w_pgd

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(32, 4), torch.randint(3, (32,))
        result = w_pgd(net, x, y, delta=0.05, p=2, cost="linf", loss="redlr", steps=10)
        print(result.clean_accuracy, result.robust_accuracy)   # e.g. 0.375 0.28125
    """
    order, s = check_attack_args(x, y, budget=("delta", delta), p=p, cost=cost, loss=loss, box=box)
    _check_schedule(steps, step_ratio, batch_size)
    q = 1.0 if math.isinf(order) else 2.0
    loss_fn, eta = get_loss(loss), step_ratio * delta / steps
    device = predictor_device(predict, x)
    x0, labels = x.detach().to(device), y.detach().to(device).long()
    low, high = float(box[0]), float(box[1])
    with attack_mode(predict):
        grads, correct, losses = loss_pass(
            predict, x0, labels, loss_fn, batch_size=batch_size, need_grad=True
        )
        clean = (float(correct.double().mean()), float(losses.mean()))
        accuracies, means, x_t, x_best = [], [], x0, x0
        for t in range(1, steps + 1):
            moves = x_t + eta * direction(grads, q=q, s=s) - x0
            x_t = (x0 + project(moves, delta=delta, q=q, s=s)).clamp(low, high)
            grads, correct, losses = loss_pass(
                predict, x_t, labels, loss_fn, batch_size=batch_size, need_grad=t < steps
            )
            accuracies.append(float(correct.double().mean()))
            means.append(float(losses.mean()))
            if accuracies[-1] < min(accuracies[:-1], default=math.inf):
                x_best = x_t
            if callback is not None:
                callback(t, x_t)
    return AttackResult(
        robust_accuracy=min(accuracies),
        accuracies=accuracies,
        losses=means,
        max_loss=max(means),
        x_adv=x_best.to(x.device),
        distance=w_distance(x0, x_best, p=order, cost=cost),
        clean_accuracy=clean[0],
        clean_loss=clean[1],
        attack="w-pgd",
        budget=float(delta),
        p=order,
        cost=cost,
        loss=loss,
        steps=steps,
    )


def w_fgsm(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    delta: float,
    p: float | str = 2,
    cost: str = "linf",
    loss: str = "redlr",
    batch_size: int = 256,
    box: tuple[float, float] = (0.0, 1.0),
    callback: Callback | None = None,
) -> AttackResult:
    """W-FGSM: one W-PGD step of size ``delta`` (``steps=1, step_ratio=1``).

    Usage::

        import torch
        from pyro_otmdr.attacks import w_fgsm, w_sensitivity

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(32, 4), torch.randint(3, (32,))
        result = w_fgsm(net, x, y, delta=1e-3, loss="ce")
        slope = (result.max_loss - result.clean_loss) / 1e-3    # ~ Upsilon for a small delta
        upsilon = w_sensitivity(net, x, y).upsilon
        assert abs(slope - upsilon) < 0.01 * upsilon
    """
    return w_pgd(
        predict,
        x,
        y,
        delta=delta,
        p=p,
        cost=cost,
        loss=loss,
        steps=1,
        step_ratio=1.0,
        batch_size=batch_size,
        box=box,
        callback=callback,
    )
