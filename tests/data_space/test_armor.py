"""The ARMOR_D (KL) dual: its root, its limits, its gradient and its errors."""

import math

import pytest
import torch

from pyro_otmdr.data_space.armor import armor_kl

LOSSES = torch.tensor([0.1, 0.4, 2.0, 0.05, 1.2, 0.7], dtype=torch.float64)


def _kl_to_uniform(weights: torch.Tensor) -> float:
    return float((weights * (weights * len(weights)).log()).sum())


@pytest.mark.parametrize("budget", [1e-4, 0.02, 0.2])
@pytest.mark.parametrize("kappa", [0.0, 0.05])
def test_at_the_root_the_weights_are_budget_away_from_uniform(budget, kappa):
    result = armor_kl(LOSSES, budget=budget, kappa=kappa)
    assert result.converged and result.lam > 0
    assert _kl_to_uniform(result.weights) == pytest.approx(budget, rel=1e-6)
    tau = result.lam + kappa
    assert torch.allclose(result.weights, torch.softmax(LOSSES / tau, 0))


def test_a_tiny_budget_gives_the_mean_and_the_dual_lies_between_mean_and_max():
    tiny = armor_kl(LOSSES, budget=1e-9, lambda_max=1e9)  # lambda* ~ std / sqrt(2 budget)
    # analytic, not rounding: the dual exceeds the mean by ~std * sqrt(2 budget) ~ 4e-5 relative
    assert tiny.converged and float(tiny.loss) == pytest.approx(float(LOSSES.mean()), 1e-4)
    assert not armor_kl(LOSSES, budget=1e-9).converged  # beyond the default cap of 100
    for budget in (0.01, 0.1, 1.0):
        value = float(armor_kl(LOSSES, budget=budget).loss)
        assert float(LOSSES.mean()) < value <= float(LOSSES.max()) + 1e-9


def test_the_gradient_with_lambda_frozen_is_the_gradient_of_the_infimum():
    losses = LOSSES.clone().requires_grad_(True)
    result = armor_kl(losses, budget=0.05, kappa=0.02)
    (grad,) = torch.autograd.grad(result.loss, losses)
    assert torch.allclose(grad, result.weights)  # Danskin: the weights
    step = 1e-6
    for i in range(len(LOSSES)):
        up, down = LOSSES.clone(), LOSSES.clone()
        up[i] += step
        down[i] -= step
        slope = (armor_kl(up, budget=0.05, kappa=0.02).loss - armor_kl(down, budget=0.05,
                 kappa=0.02).loss) / (2 * step)  # fmt: skip
        assert float(slope) == pytest.approx(float(grad[i]), abs=1e-6)


def test_kappa_floors_the_temperature():
    result = armor_kl(LOSSES, budget=10.0, kappa=0.5)  # a budget past log B: lambda = 0
    assert result.lam == 0.0 and result.converged
    assert torch.allclose(result.weights, torch.softmax(LOSSES / 0.5, 0))


def test_costs_below_the_existence_bound_hit_the_cap():
    costs = torch.full_like(LOSSES, 0.5)  # needs budget > -log mean exp(-c) = 0.5
    capped = armor_kl(LOSSES, budget=0.1, costs=costs, lambda_max=50.0)
    assert not capped.converged and capped.lam == 50.0
    fine = armor_kl(LOSSES, budget=0.6, costs=costs)
    assert fine.converged and fine.lam < 100.0
    assert math.isfinite(float(fine.loss))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"losses": LOSSES[:, None], "budget": 0.1}, "1-D tensor"),
        ({"losses": torch.tensor([1.0, math.nan]), "budget": 0.1}, "finite"),
        ({"losses": LOSSES, "budget": 0.0}, "budget must be a number > 0"),
        ({"losses": LOSSES, "budget": 0.1, "kappa": -1.0}, "kappa must be a number >= 0"),
        ({"losses": LOSSES, "budget": 0.1, "costs": torch.zeros(3)}, "costs must be"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs, match):
    losses = kwargs.pop("losses")
    with pytest.raises(ValueError, match=match):
        armor_kl(losses, **kwargs)
