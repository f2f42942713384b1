"""The Pyro-agnostic step on a plain torch quadratic: the same hand-derived values as via SVI."""

import pytest
import torch

from pyro_otmdr.model_space.step import NonFiniteLossError, ParamGroups, SharpnessAwareStep


def quadratic_evaluate(theta, target):
    """``L_b(theta) = |theta - mean_b(target)|^2 / 2``; grad ``theta - mean_b``."""

    def evaluate(batch, label):
        (rows,), _ = batch
        loss = 0.5 * (theta - rows.mean(0)).pow(2).sum()
        loss.backward()
        return loss.item()

    return evaluate


def halves(batch):
    (rows,), kwargs = batch
    n = len(rows) // 2
    return [((rows[:n],), kwargs), ((rows[n:],), kwargs)]


def test_otmdr_step_on_a_torch_quadratic():
    target = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    theta = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    theta0 = theta.detach().clone()
    step = SharpnessAwareStep(radii=(0.3, 0.6), n_particles=2)
    info = step.run(
        quadratic_evaluate(theta, target), ((target,), {}), halves, ParamGroups([theta])
    )

    def move(t, rows, r):
        g = t - rows.mean(0)
        return t + r * g / g.norm()

    t2 = move(move(theta0, target[:4], 0.3), target[4:], 0.6)
    torch.testing.assert_close(theta.grad, t2 - target.mean(0))  # two identical particles
    assert torch.equal(theta.detach(), theta0)
    assert len(info.losses) == 2 and len(info.ascent_norms) == 4


def test_non_finite_loss_raises_and_restores():
    theta = torch.ones(3, requires_grad=True)

    def evaluate(batch, label):
        (theta * 2).sum().backward()
        return float("nan") if "ascent step 2" in label else 1.0

    step = SharpnessAwareStep(radii=(0.1, 0.2))
    with pytest.raises(NonFiniteLossError, match="particle 1, ascent step 2"):
        step.run(evaluate, ((torch.zeros(4, 1),), {}), halves, ParamGroups([theta]))
    assert torch.equal(theta.detach(), torch.ones(3))
    assert not theta.grad.any()


def test_no_parameter_to_perturb_is_an_error():
    step = SharpnessAwareStep(radii=(0.1,))
    with pytest.raises(ValueError, match="no parameter to perturb"):
        step.run(lambda b, label: 0.0, ((torch.zeros(2),), {}), lambda b: [b], ParamGroups())
