"""The ARMOR_D dual with the KL divergence: adversarial losses re-weighted within a budget.

ARMOR_D (Birrell & Ebrahimi, arXiv 2309.03791) replaces the mean of per-example (transported)
losses ``L_i`` by the worst re-weighting within an optimal-transport-regularised KL budget. Its
convex dual (derived in the docs, Algorithms: ARMOR_D), with ``tau = lambda + kappa``::

    ARMOR(L) = inf_{lambda >= 0}  budget * lambda + tau * log mean_i exp(L_i / tau - c_i)

``c_i`` are per-example transport costs (0 for a hard ball). The minimising ``lambda`` is found by
bisection on the derivative of this convex one-dimensional function, with the losses detached,
and then held fixed: by Danskin's theorem the gradient of the dual at that ``lambda`` is the
gradient of the infimum, and it re-weights the examples by ``softmax(L_i / tau - c_i)``. At an
interior optimum with ``c = 0`` the weights are exactly ``budget`` away from uniform in KL.
``kappa`` floors the temperature: the weights are never sharper than ``softmax(L / kappa)``.
This module is the functional core of :class:`~.objectives.ArmorLoss` and the Pyro loss ``ARMOR``.

Usage::

    import torch
    from pyro_otmdr.data_space import armor_kl

    per_example_losses = torch.tensor([0.1, 2.0, 0.3], requires_grad=True)
    result = armor_kl(per_example_losses, budget=0.02, kappa=0.1)
    result.loss.backward()        # the examples weighted by result.weights
    assert torch.allclose(per_example_losses.grad, result.weights)
    assert result.converged and result.lam >= 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .common import NonFiniteValueError

__all__ = ["ArmorDual", "armor_kl"]


@dataclass
class ArmorDual:
    """The ARMOR_D (KL) dual of one batch.

    :ivar loss: the dual value at ``lam``, a 0-d tensor differentiable in the losses.
    :ivar lam: the minimising ``lambda`` (``lambda_max`` when none was found below it).
    :ivar weights: ``softmax(L / tau - c)``, detached: how the loss weighs each example.
    :ivar converged: ``False`` when the dual still decreased at ``lambda_max`` (with costs, a
        finite minimiser needs ``budget > -log mean_i exp(-c_i)``).
    """

    loss: torch.Tensor
    lam: float
    weights: torch.Tensor
    converged: bool


def _dual(losses: torch.Tensor, costs: torch.Tensor, lam: float, budget: float, kappa: float):
    """``(Phi(lambda), Phi'(lambda), weights)`` for the tensors given."""
    tau = lam + kappa
    scores = losses / tau - costs
    log_mean = torch.logsumexp(scores, dim=0) - math.log(losses.shape[0])
    weights = torch.softmax(scores, dim=0)
    value = budget * lam + tau * log_mean
    slope = budget + log_mean - (weights * losses).sum() / tau
    return value, slope, weights


def _solve(
    losses: np.ndarray, costs: np.ndarray, budget: float, kappa: float, lambda_max: float
) -> tuple[float, bool]:
    """The minimiser of the convex dual by bracketing and bisection on its derivative.

    Runs in float64 NumPy on one host copy of the batch: one device transfer per batch, not one
    synchronisation per bisection step.
    """

    def slope(lam: float) -> float:
        tau = lam + kappa
        scores = losses / tau - costs
        shift = scores.max()
        weights = np.exp(scores - shift)
        total = weights.sum()
        log_mean = shift + math.log(total / len(losses))
        return budget + log_mean - float(weights @ losses) / total / tau

    spread = float(losses.max() - losses.min()) + 1e-12
    low = 0.0 if kappa > 0 else 1e-9 * spread
    if slope(low) >= 0:
        return low, True
    high = spread
    while slope(high) < 0:
        if high >= lambda_max:
            return lambda_max, False
        low, high = high, min(2 * high, lambda_max)
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
        if high - low <= 1e-12 * (1 + high):
            break
    return 0.5 * (low + high), True


def armor_kl(
    losses: torch.Tensor,
    *,
    budget: float,
    kappa: float = 0.0,
    costs: torch.Tensor | None = None,
    lambda_max: float = 100.0,
) -> ArmorDual:
    """The ARMOR_D dual of per-example losses under a KL budget (see the module docstring).

    :param losses: per-example losses ``(B,)`` (e.g. the CE at transported inputs).
    :param budget: the KL (plus transport) budget ``epsilon`` > 0; the reference scripts use
        0.02 (TRADES base, CIFAR-10) to 0.2 (CIFAR-100).
    :param kappa: the temperature floor >= 0 (0.1 in the reference CIFAR-10 script).
    :param costs: per-example transport costs ``(B,)`` >= 0; default none (a hard ball).
    :param lambda_max: the cap on ``lambda`` (the reference code's 100).
    :raises NonFiniteValueError: (a ``ValueError``) for a NaN or infinite loss, naming the first.
    :raises ValueError: for losses that are not a non-empty 1-D tensor, a ``budget`` <= 0,
        ``kappa`` < 0, or costs of another shape.

    Usage::

        import torch
        from pyro_otmdr.data_space import armor_kl

        result = armor_kl(torch.tensor([0.1, 2.0, 0.3]), budget=0.05)
        assert result.loss >= torch.tensor([0.1, 2.0, 0.3]).mean()   # worse than the mean
        assert result.weights.argmax() == 1                          # the hard example weighs most
    """
    _check(losses, budget, kappa, costs, lambda_max)
    costs = torch.zeros_like(losses) if costs is None else costs.to(losses)
    host = torch.stack([losses.detach(), costs.detach()]).double().cpu().numpy()
    _check_finite(host[0])
    lam, converged = _solve(host[0], host[1], budget, kappa, lambda_max)
    value, _, weights = _dual(losses, costs, lam, budget, kappa)
    return ArmorDual(value, lam, weights.detach(), converged)


def _check(losses, budget, kappa, costs, lambda_max) -> None:
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or losses.numel() == 0:
        raise ValueError("losses must be a non-empty 1-D tensor, one loss per example")
    for name, value, low in (("budget", budget, 0.0), ("lambda_max", lambda_max, 0.0)):
        if not isinstance(value, int | float) or not math.isfinite(value) or not value > low:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if not isinstance(kappa, int | float) or not math.isfinite(kappa) or kappa < 0:
        raise ValueError(f"kappa must be a number >= 0, got {kappa!r}")
    if costs is not None and (not isinstance(costs, torch.Tensor) or costs.shape != losses.shape):
        raise ValueError(f"costs must be a tensor of shape {tuple(losses.shape)}, like losses")


def _check_finite(losses: np.ndarray) -> None:
    """On the host copy of the losses, so that checking them costs no device sync of its own."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        index, value = int(bad[0]), float(losses[bad[0]])
        raise NonFiniteValueError(
            f"losses must be finite, got {value} at index {index}; check the batch for NaN or "
            "infinite losses",
            (index,),
            value,
        )
