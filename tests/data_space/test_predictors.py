"""The posterior predictive as a predictor, and the attacks on every guide family."""

import math

import pyro
import pytest
import torch

from pyro_otmdr.attacks import PosteriorPredictive, pgd, posterior_predictive, w_pgd
from pyro_otmdr.evaluation import evaluate
from tests.conftest import DEVICES, EPS32

from .linear import DIM, GUIDES, fit_bayesian, linear_problem


@pytest.mark.parametrize("kind", list(GUIDES))
def test_frozen_predictive_is_deterministic_and_equals_evaluate(kind):
    model, guide, x, y = fit_bayesian(kind)
    pyro.set_rng_seed(3)
    expected = evaluate(model, guide, x, y, num_samples=8).probs
    pyro.set_rng_seed(3)
    predict = posterior_predictive(model, guide, num_samples=8)
    first, second = predict(x), predict(x[:7])
    assert predict.num_draws == {"delta": 1, "ensemble": 3, "normal": 8}[kind]
    # eps-derived: a float32 mixture of <= 8 draws by two routes (logsumexp of log-softmaxes
    # against a float64 mean of their exps): float32 eps times ~100 relative, ~10 absolute
    close = dict(rtol=100 * EPS32, atol=10 * EPS32)
    assert torch.allclose(first.exp().double(), expected, **close)
    # another batch size may take another float32 matmul blocking: the same bound
    assert torch.equal(first[:7], second) or torch.allclose(first[:7], second, **close)
    # float32 log-probabilities of 4 classes normalise to 0 within eps times ~100 (|log p| < 10)
    assert torch.allclose(first.logsumexp(-1), torch.zeros(len(x)), rtol=0, atol=100 * EPS32)


def test_resampled_and_redrawn_predictives_draw_afresh():
    model, guide, x, _ = fit_bayesian("normal")
    frozen = posterior_predictive(model, guide, num_samples=4)
    fresh = frozen.redraw()
    assert isinstance(fresh, PosteriorPredictive)
    assert not torch.allclose(frozen(x), fresh(x))
    resampled = posterior_predictive(model, guide, num_samples=4, resample=True)
    assert not torch.allclose(resampled(x), resampled(x))


def test_predictive_is_differentiable_in_x():
    model, guide, x, y = fit_bayesian("normal")
    predict = posterior_predictive(model, guide, num_samples=4)
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(predict(x).gather(-1, y[:, None]).sum(), x)
    assert grad.abs().sum() > 0


def _grad(param):
    """The parameter's gradient as a comparable value (SVI leaves zeroed ones behind)."""
    return None if param.grad is None else param.grad.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(GUIDES))
def test_attacks_on_every_guide_family(kind, device):
    model, guide, x, y = fit_bayesian(kind, device)
    model.train()
    predict = posterior_predictive(model, guide, num_samples=4)
    assert predict.device.type == device
    grads = {name: _grad(p) for name, p in pyro.get_param_store().named_parameters()}
    for result in (
        w_pgd(predict, x, y, delta=0.2, steps=5),
        pgd(predict, x, y, eps=0.2, steps=5),
    ):
        assert result.robust_accuracy <= result.clean_accuracy
        assert result.distance <= 0.2 * (1 + 64 * EPS32)  # a float32 W2 distance of float32 moves
        assert result.x_adv.device == x.device
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert grads == {name: _grad(p) for name, p in pyro.get_param_store().named_parameters()}


def test_attack_on_a_plain_module():
    _, x, y = linear_problem()
    net = torch.nn.Sequential(torch.nn.Linear(DIM, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    result = w_pgd(net.double(), x, y, delta=0.1, steps=4, loss="ce")
    assert len(result.accuracies) == 4 and result.distance <= 0.1 + 1e-12  # float64
    assert math.isfinite(result.max_loss)


def test_bad_predictive_arguments():
    model, guide, _, _ = fit_bayesian("delta")
    with pytest.raises(ValueError, match="num_samples must be"):
        posterior_predictive(model, guide, num_samples=0)
    with pytest.raises(ValueError, match="site"):
        posterior_predictive(model, guide, site="")
