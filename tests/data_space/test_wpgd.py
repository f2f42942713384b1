"""W-PGD and pointwise PGD on a linear softmax model, against hand-derived steps and invariants."""

import math

import pytest
import torch

from pyro_otmdr.attacks import pgd, w_distance, w_fgsm, w_pgd, w_sensitivity
from tests.conftest import DEVICES

from .linear import ce_gradients, linear_problem


def _iterates(attack, *args, **kwargs):
    """Run an attack; return its result and every iterate (copies)."""
    seen = []
    result = attack(*args, callback=lambda t, x_t: seen.append(x_t.clone()), **kwargs)
    return result, seen


@pytest.mark.parametrize("device", DEVICES)
def test_w2_linf_direction_by_hand(device):
    net, x, y = linear_problem(device)
    delta = 1e-3
    _, (x1,) = _iterates(w_fgsm, net, x, y, delta=delta, p=2, cost="linf", loss="ce")
    g = ce_gradients(net, x, y)
    l1 = g.abs().sum(-1, keepdim=True)
    expected = delta * g.sign() * l1 / l1.square().mean().sqrt()
    # the move has W cost delta; the authors' contraction rho = delta / (delta + 1e-8) (A4)
    # clips every coordinate (all of size ||move_i||_inf here) by rho
    assert torch.allclose(x1 - x, expected * delta / (delta + 1e-8), rtol=1e-7, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_w2_l2_direction_by_hand(device):
    net, x, y = linear_problem(device)
    delta = 1e-3
    _, (x1,) = _iterates(w_fgsm, net, x, y, delta=delta, p=2, cost="l2", loss="ce")
    g = ce_gradients(net, x, y)
    expected = delta * g / g.norm(dim=-1).square().mean().sqrt()
    assert torch.allclose(x1 - x, expected * delta / (delta + 1e-8), rtol=1e-7, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [2, math.inf])
@pytest.mark.parametrize("cost", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "redlr"])
def test_every_iterate_is_within_the_budget_after_projection_and_clamp(device, p, cost, loss):
    net, x, y = linear_problem(device, low=0.0, high=1.0)
    x = x.round()  # on the faces of the box, so the clamp binds
    delta = 0.3
    result, seen = _iterates(
        w_pgd, net, x, y, delta=delta, p=p, cost=cost, loss=loss, steps=8, step_ratio=3.0
    )
    assert len(seen) == 8
    assert max(w_distance(x, x_t, p=p, cost=cost) for x_t in seen) <= delta + 1e-6
    assert all(bool(((x_t >= 0) & (x_t <= 1)).all()) for x_t in seen)
    assert result.distance <= delta + 1e-6
    assert max(w_distance(x, x_t, p=p, cost=cost) for x_t in seen) > 0.5 * delta  # it moved


@pytest.mark.parametrize("device", DEVICES)
def test_w_infinity_is_pointwise_pgd_without_random_start_step_for_step(device):
    net, x, y = linear_problem(device)
    delta, steps = 0.2, 6
    _, w_iterates = _iterates(w_pgd, net, x, y, delta=delta, p="inf", loss="ce", steps=steps)
    eta = 1.875 * delta / steps
    _, pgd_iterates = _iterates(
        pgd, net, x, y, eps=delta, steps=steps, step_size=eta, random_start=False, loss="ce"
    )
    assert len(w_iterates) == len(pgd_iterates) == steps
    for a, b in zip(w_iterates, pgd_iterates, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(w_iterates[0], w_iterates[-1])


@pytest.mark.parametrize("device", DEVICES)
def test_redlr_spends_no_budget_on_misclassified_points(device):
    net, x, y = linear_problem(device)
    wrong = net(x).argmax(-1) != y
    assert wrong.any() and (~wrong).any()
    _, seen = _iterates(w_pgd, net, x, y, delta=0.2, loss="redlr", steps=5)
    for x_t in seen:
        assert torch.equal(x_t[wrong], x[wrong])
    assert not torch.equal(seen[-1][~wrong], x[~wrong])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cost", ["linf", "l2"])
def test_first_order_loss_gain_tends_to_upsilon(device, cost):
    net, x, y = linear_problem(device)
    upsilon = w_sensitivity(net, x, y, p=2, cost=cost, loss="ce").upsilon
    errors = []
    for delta in (1e-2, 1e-3, 1e-4):
        result = w_fgsm(net, x, y, delta=delta, p=2, cost=cost, loss="ce")
        errors.append(abs((result.max_loss - result.clean_loss) / delta / upsilon - 1.0))
    assert errors[-1] < 2e-3
    assert errors[0] > errors[1] > errors[2]


def test_sensitivity_statistics_by_hand():
    net, x, y = linear_problem()
    sens = w_sensitivity(net, x, y, p=2, cost="linf")
    g = ce_gradients(net, x, y)
    assert sens.upsilon == pytest.approx(float(g.abs().sum(-1).square().mean().sqrt()))
    assert sens.accuracy == pytest.approx(0.8)
    losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none").detach()
    wrong = net(x).argmax(-1) != y
    assert sens.loss == pytest.approx(float(losses.mean()))
    assert sens.loss_misclassified == pytest.approx(float(losses[wrong].mean()))
    assert sens.loss_estimate(0.1) == pytest.approx(sens.loss + 0.1 * sens.upsilon)
    pointwise = w_sensitivity(net, x, y, p=math.inf, cost="linf")
    assert pointwise.upsilon == pytest.approx(float(g.abs().sum(-1).mean()))


@pytest.mark.parametrize("device", DEVICES)
def test_robust_accuracy_is_at_most_clean_and_is_the_minimum(device):
    net, x, y = linear_problem(device)
    for result in (
        w_pgd(net, x, y, delta=0.1, steps=10),
        w_pgd(net, x, y, delta=0.1, steps=10, cost="l2", loss="ce"),
        pgd(net, x, y, eps=0.1, steps=10, restarts=2),
    ):
        assert result.robust_accuracy <= result.clean_accuracy
        assert result.robust_accuracy == min(result.accuracies)
        assert result.robust_accuracy < result.clean_accuracy  # the attack does something
    w = w_pgd(net, x, y, delta=0.1, steps=10)
    x_adv_accuracy = float((net(w.x_adv).argmax(-1) == y).double().mean())
    assert x_adv_accuracy == w.robust_accuracy
    assert w.max_loss == max(w.losses)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attack", ["w2-linf", "w2-l2", "pgd-l2"])
def test_batched_and_unbatched_attacks_agree(device, attack):
    net, x, y = linear_problem(device)
    if attack == "pgd-l2":
        run = dict(eps=0.2, norm="l2", steps=5, random_start=False)
        whole, chunks = (
            pgd(net, x, y, batch_size=len(x), **run),
            pgd(net, x, y, batch_size=7, **run),
        )
    else:
        run = dict(delta=0.2, cost=attack[3:], steps=5)
        whole = w_pgd(net, x, y, batch_size=len(x), **run)
        chunks = w_pgd(net, x, y, batch_size=7, **run)
    assert torch.allclose(whole.x_adv, chunks.x_adv, atol=1e-12)
    assert whole.accuracies == chunks.accuracies


def test_pgd_random_start_and_restarts_stay_in_the_ball():
    net, x, y = linear_problem()
    result, seen = _iterates(pgd, net, x, y, eps=0.05, steps=3, restarts=3, norm="l2")
    assert len(seen) == 9 and len(result.accuracies) == 9
    assert max(w_distance(x, x_t, p="inf", cost="l2") for x_t in seen) <= 0.05 + 1e-9
    assert result.extra["restarts"] == 3
    broken = net(result.x_adv).argmax(-1) != y
    assert float((~broken).double().mean()) <= result.robust_accuracy


class _Counting(torch.nn.Module):
    """A net in train mode that records the mode it was called in."""

    def __init__(self, net):
        super().__init__()
        self.net, self.modes = net, []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


@pytest.mark.parametrize("attack", ["w_pgd", "pgd", "w_sensitivity"])
def test_eval_mode_no_parameter_gradients_and_the_callers_x_untouched(attack):
    net, x, y = linear_problem()
    model = _Counting(net).train()
    before = x.clone()
    kwargs = {"w_pgd": dict(delta=0.1, steps=3), "pgd": dict(eps=0.1, steps=3)}.get(attack, {})
    {"w_pgd": w_pgd, "pgd": pgd, "w_sensitivity": w_sensitivity}[attack](model, x, y, **kwargs)
    assert model.modes and not any(model.modes)
    assert model.training and model.net.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, before)


BAD = {
    "delta zero": (dict(delta=0.0), "delta must be"),
    "delta negative": (dict(delta=-0.1), "delta must be"),
    "unknown p": (dict(delta=0.1, p=1), "choose 2 or inf"),
    "unknown cost": (dict(delta=0.1, cost="l1"), "'linf', 'l2'"),
    "unknown loss": (dict(delta=0.1, loss="hinge"), "'ce', 'dlr', 'redlr'"),
    "steps": (dict(delta=0.1, steps=0), "steps must be"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_arguments_raise_value_errors_naming_the_allowed_values(case):
    net, x, y = linear_problem()
    kwargs, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        w_pgd(net, x, y, **kwargs)


def test_bad_inputs_raise_value_errors():
    net, x, y = linear_problem()
    with pytest.raises(ValueError, match="outside the box"):
        w_pgd(net, x + 1.0, y, delta=0.1)
    with pytest.raises(ValueError, match="same non-zero length"):
        w_pgd(net, x, y[:-1], delta=0.1)
    with pytest.raises(ValueError, match="eps must be"):
        pgd(net, x, y, eps=0)
    with pytest.raises(ValueError, match="'linf', 'l2'"):
        pgd(net, x, y, eps=0.1, norm="l1")
    two = torch.nn.Linear(6, 2).double()
    with pytest.raises(ValueError, match="at least 3 classes"):
        w_pgd(two, x, y % 2, delta=0.1, loss="dlr")
    with pytest.raises(ValueError, match=r"shape \(B, C\)"):
        w_pgd(lambda t: t.sum(-1), x, y, delta=0.1)


@pytest.mark.slow
def test_w2_robust_accuracy_is_at_most_pointwise_on_a_trained_network():
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32) / 16.0
    y = torch.tensor(labels)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:1400]), y[:1400]).backward()
        optimizer.step()
    x_test, y_test = x[1400:1600], y[1400:1600]
    for budget in (0.03, 0.06):
        w2 = w_pgd(net, x_test, y_test, delta=budget, steps=20)
        pointwise = pgd(net, x_test, y_test, eps=budget, steps=20)
        assert w2.clean_accuracy > 0.85
        assert pointwise.robust_accuracy < w2.clean_accuracy
        assert w2.robust_accuracy <= pointwise.robust_accuracy


def test_pgd_restarts_without_random_start_repeat_the_same_run():
    net, x, y = linear_problem()  # a later restart starts again from x with x's gradient
    one = pgd(net, x, y, eps=0.05, steps=3, random_start=False)
    three = pgd(net, x, y, eps=0.05, steps=3, random_start=False, restarts=3)
    assert three.accuracies == one.accuracies + [one.robust_accuracy] * 6  # running minimum
    assert torch.equal(three.x_adv, one.x_adv)
