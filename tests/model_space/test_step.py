"""The Pyro-agnostic step on a plain torch quadratic: the same hand-derived values as via SVI
(in float64, so the default tolerances are float64 rounding on any machine)."""

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


@pytest.mark.usefixtures("float64")
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


# -- losses stay on the device until the step ends ----------------------------------------------


def tensor_quadratic(theta, fail_at=None, nan_at=None):
    """The quadratic, returning its loss as a tensor; pass ``nan_at`` is NaN, ``fail_at`` raises."""
    labels = []

    def evaluate(batch, label):
        labels.append(label)
        if len(labels) == fail_at:
            raise RuntimeError("boom")
        (rows,), _ = batch
        loss = 0.5 * (theta - rows.mean(0)).pow(2).sum()
        loss.backward()
        return loss.detach() * (float("nan") if len(labels) == nan_at else 1.0)

    return evaluate


def test_tensor_losses_are_converted_once_at_the_end(monkeypatch):
    target = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    theta = torch.zeros(3, requires_grad=True)

    def no_sync(self, *args):
        raise AssertionError("a loss was synchronised inside the step")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    monkeypatch.setattr(torch.Tensor, "__float__", no_sync)
    info = SharpnessAwareStep(radii=(0.3, 0.6), n_particles=2).run(
        tensor_quadratic(theta), ((target,), {}), halves, ParamGroups([theta])
    )
    assert all(isinstance(loss, float) for loss in info.losses) and len(info.losses) == 2


@pytest.mark.parametrize(("nan_at", "label"), [(1, "ascent step 1"), (3, "full-batch gradient")])
def test_a_nan_tensor_loss_is_named_when_the_step_ends(nan_at, label):
    theta = torch.ones(3, requires_grad=True)
    step = SharpnessAwareStep(radii=(0.1, 0.2))
    with pytest.raises(NonFiniteLossError, match=f"particle 1, {label}: the loss is nan"):
        step.run(
            tensor_quadratic(theta, nan_at=nan_at),
            ((torch.zeros(4, 3),), {}),
            halves,
            ParamGroups([theta]),
        )
    assert torch.equal(theta.detach(), torch.ones(3))
    assert not theta.grad.any()


def test_an_error_after_a_nan_loss_is_blamed_on_the_nan():
    theta = torch.ones(3, requires_grad=True)
    step = SharpnessAwareStep(radii=(0.1, 0.2))
    evaluate = tensor_quadratic(theta, nan_at=1, fail_at=2)
    with pytest.raises(NonFiniteLossError, match="particle 1, ascent step 1") as caught:
        step.run(evaluate, ((torch.zeros(4, 3),), {}), halves, ParamGroups([theta]))
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert torch.equal(theta.detach(), torch.ones(3))


# -- the unperturbed gradient of the parameters not perturbed ----------------------------------


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("n", [8, 9])
@pytest.mark.parametrize("mean", [True, False])
def test_fixed_parameters_take_the_whole_batch_gradient_from_halves_when_told(n, mean):
    """``L_b = |theta - mean_b|^2 / 2 + |phi - mean_b|^2 / 2`` is no mean over examples, so only
    the right answer (the whole batch's gradient at the center) passes for both settings."""
    target = torch.randn(n, 3, generator=torch.Generator().manual_seed(1))
    theta = torch.zeros(3, requires_grad=True)
    phi = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    rows_seen = []

    def evaluate(batch, label):
        (rows,), _ = batch
        rows_seen.append(len(rows))
        center = rows.mean(0) if mean else rows.sum(0) / 4
        loss = 0.5 * ((theta - center).pow(2).sum() + (phi - center).pow(2).sum())
        loss.backward()
        return loss.detach()

    def halves_at_random(batch):  # like split_in_halves: halves partition the batch
        (rows,), kwargs = batch
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(2))
        return [((rows[perm[: n // 2]],), kwargs), ((rows[perm[n // 2 :]],), kwargs)]

    step = SharpnessAwareStep(radii=(0.1, 0.2))
    step.run(
        evaluate,
        ((target,), {}),
        halves_at_random,
        ParamGroups([theta], [phi]),
        mean_over_examples=lambda: mean,
    )
    center = target.mean(0) if mean else target.sum(0) / 4
    torch.testing.assert_close(phi.grad, torch.tensor([1.0, 2.0, 3.0]) - center)
    assert rows_seen[-1] == (n - n // 2 if mean else n)
