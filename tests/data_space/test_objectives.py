"""The data-robust objectives in torch terms and their inner loops, on the linear softmax model."""

import math

import pytest
import torch

from pyro_otmdr.attacks import (
    AdversarialLoss,
    ArmorLoss,
    TradesLoss,
    WdatLoss,
    armor_kl,
    ce,
    kl_to_clean,
    w_distance,
    w_sensitivity,
)
from pyro_otmdr.data_space.common import attack_mode
from pyro_otmdr.data_space.inner import ball_ascent, batch_sensitivity, w_ball_ascent
from pyro_otmdr.data_space.objectives import batch_budget

from .linear import ce_gradients, linear_problem


def test_kl_to_clean_by_hand():
    clean = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)  # float64: by hand
    adv = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    p, q = torch.softmax(clean, -1), torch.softmax(adv, -1)
    torch.testing.assert_close(kl_to_clean(clean, adv), (p * (p / q).log()).sum(-1))
    assert float(kl_to_clean(clean, clean)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("s", [1.0, 2.0])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_ball_ascent_stays_in_the_ball_and_the_box_and_raises_the_loss(s, start):
    net, x, y = linear_problem(low=0.0, high=1.0)
    eps = 0.05
    x_adv = ball_ascent(
        lambda z: ce(net(z), y), x, eps=eps, steps=5, step_size=0.02, s=s, start=start
    )
    moves = (x_adv - x).flatten(1)
    size = moves.abs().amax(1) if s == 1.0 else moves.norm(dim=1)
    assert float(size.max()) <= eps + 1e-9
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(ce(net(x_adv), y).mean().detach()) > float(ce(net(x), y).mean().detach())
    assert not x_adv.requires_grad and all(p.grad is None for p in net.parameters())


def test_one_linf_step_from_x_is_fgsm_by_hand():
    net, x, y = linear_problem()
    x_adv = ball_ascent(lambda z: ce(net(z), y), x, eps=0.01, steps=1, step_size=0.01, start="none")
    torch.testing.assert_close(x_adv, x + 0.01 * ce_gradients(net, x, y).sign())


def test_w_ball_ascent_stays_within_the_w2_budget():
    net, x, y = linear_problem(low=0.0, high=1.0)
    x_adv = w_ball_ascent(lambda z: ce(net(z), y), x, delta=0.05, steps=10)
    assert w_distance(x, x_adv, p=2, cost="linf") <= 0.05 + 1e-6
    assert float(ce(net(x_adv), y).mean().detach()) > float(ce(net(x), y).mean().detach())


def test_batch_sensitivity_is_the_attack_modules_upsilon():
    net, x, y = linear_problem()
    expected = w_sensitivity(net, x, y, loss="ce").upsilon
    assert float(batch_sensitivity(lambda z: ce(net(z), y), x)) == pytest.approx(expected)
    by_hand = ce_gradients(net, x, y).abs().sum(1).square().mean().sqrt()
    assert float(batch_sensitivity(lambda z: ce(net(z), y), x)) == pytest.approx(float(by_hand))


def test_wdat_budgets_average_back_to_delta_in_the_w2_sense():
    """With the whole set's sensitivity as the estimate, equal batches' budgets have RMS delta,
    and the batches' adversarial sets together stay within W2 <= delta."""
    net, x, y = linear_problem(low=0.0, high=1.0)
    delta, upsilon = 0.05, w_sensitivity(net, x, y, loss="ce").upsilon
    budgets, moved = [], []
    for batch in torch.arange(len(x)).split(8):  # 5 equal batches
        loss_fn = lambda z, b=batch: ce(net(z), y[b])  # noqa: E731
        budget = batch_budget(delta, batch_sensitivity(loss_fn, x[batch]), upsilon)
        budgets.append(float(budget))
        moved.append(w_ball_ascent(loss_fn, x[batch], delta=budget, steps=5))
    assert math.sqrt(sum(b * b for b in budgets) / len(budgets)) == pytest.approx(delta, rel=1e-6)
    assert len(set(budgets)) == len(budgets)  # the batches do get different shares
    assert w_distance(x, torch.cat(moved), p=2, cost="linf") <= delta * (1 + 1e-6)


def test_wdat_running_estimate_starts_at_delta_and_follows_the_batches():
    objective = WdatLoss(delta=0.1, decay=0.5)  # float64 sensitivities: the budget follows
    assert float(objective.budget(torch.tensor(2.0, dtype=torch.float64))) == pytest.approx(0.1)
    # estimate^2 = 0.5 * 4 + 0.5 * 16 = 10, so the second batch gets 0.1 * 4 / sqrt(10)
    second = objective.budget(torch.tensor(4.0, dtype=torch.float64))
    assert float(second) == pytest.approx(0.4 / math.sqrt(10))
    fresh = WdatLoss(delta=0.1)
    fresh.load_state_dict(objective.state_dict())
    assert float(fresh.upsilon_sq) == pytest.approx(10.0)


def test_trades_with_beta_zero_is_the_clean_cross_entropy():
    net, x, y = linear_problem()
    loss = TradesLoss(eps=0.05, beta=0.0)(net, x, y)
    torch.testing.assert_close(loss, ce(net(x), y).mean())


def test_trades_is_clean_ce_plus_beta_kl_at_the_given_inputs():
    net, x, y = linear_problem()
    x_adv = (x + 0.03).clamp(0, 1)
    loss = TradesLoss(eps=0.05, beta=6.0)(net, x, y, x_adv=x_adv)
    expected = ce(net(x), y).mean() + 6.0 * kl_to_clean(net(x), net(x_adv)).mean()
    torch.testing.assert_close(loss, expected)


def test_adversarial_loss_tends_to_the_clean_loss_with_the_radius():
    net, x, y = linear_problem()
    with torch.no_grad():
        clean = float(ce(net(x), y).mean())
        small, larger = AdversarialLoss(eps=1e-9, steps=3), AdversarialLoss(eps=0.05)
        assert float(small(net, x, y)) == pytest.approx(clean, rel=1e-6)
        assert float(larger(net, x, y)) > clean


def test_armor_loss_is_mix_of_clean_and_the_dual_of_the_adversarial_losses():
    net, x, y = linear_problem()
    x_adv = (x - 0.02).clamp(0, 1)
    objective = ArmorLoss(eps=0.05, budget=0.05, kappa=0.0, mix=0.25)
    loss = objective(net, x, y, x_adv=x_adv)
    dual = armor_kl(ce(net(x_adv), y), budget=0.05)
    torch.testing.assert_close(loss, 0.25 * ce(net(x), y).mean() + 0.75 * dual.loss)
    weights = objective.last_dual.weights
    kl = float((weights * (weights * len(weights)).log()).sum())
    assert kl == pytest.approx(0.05, rel=1e-6)  # an interior root: KL(w || uniform) = budget


def test_armor_trades_base_reweights_the_trades_losses():
    net, x, y = linear_problem()
    x_adv = (x + 0.02).clamp(0, 1)
    objective = ArmorLoss(eps=0.05, budget=0.02, mix=0.0, base="trades", beta=2.0)
    expected_losses = ce(net(x), y) + 2.0 * kl_to_clean(net(x), net(x_adv))
    dual = armor_kl(expected_losses, budget=0.02, kappa=0.1)
    torch.testing.assert_close(objective(net, x, y, x_adv=x_adv), dual.loss)


def test_module_losses_attack_in_eval_mode_and_restore_training():
    net, x, y = linear_problem()
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), net).train()
    seen = []
    net[1].register_forward_hook(lambda m, i, o: seen.append(net[0].training))
    TradesLoss(eps=0.05, steps=2)(net, x, y)
    assert seen[:3] == [False, False, False] and seen[-2:] == [True, True]
    assert net.training


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AdversarialLoss(eps=0.0), "eps must be"),
        (lambda: AdversarialLoss(eps=0.1, mix=1.5), "mix must be"),
        (lambda: TradesLoss(beta=-1.0), "beta must be"),
        (lambda: TradesLoss(steps=0), "steps must be"),
        (lambda: TradesLoss(norm="l1"), "norm"),
        (lambda: WdatLoss(delta=-0.1), "delta must be"),
        (lambda: WdatLoss(decay=1.0), "decay must be"),
        (lambda: WdatLoss(attack_loss="dlr"), "attack_loss"),
        (lambda: WdatLoss(outer="clean"), "outer"),
        (lambda: WdatLoss(budget_subset=-1), "budget_subset must be"),
        (lambda: ArmorLoss(budget=0.0), "budget must be"),
        (lambda: ArmorLoss(mix=-0.1), "mix must be"),
        (lambda: ArmorLoss(kappa=-1.0), "kappa must be"),
        (lambda: ArmorLoss(base="mart"), "base"),
    ],
)
def test_bad_arguments_say_what_is_allowed(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_inputs_outside_the_box_are_refused_before_any_step():
    net, x, y = linear_problem()
    with pytest.raises(ValueError, match="outside the box"):
        TradesLoss()(net, x + 1.0, y)


def test_module_recipe_with_otmdr_optimizer_attacks_once_and_splits_the_rows():
    """docs/data_space.md's recipe: attack once, then let OTMDROptimizer split x, x_adv, y alike."""
    from pyro_otmdr import OTMDROptimizer

    net, x, y = linear_problem(low=0.0, high=1.0)
    loss_fn = TradesLoss(eps=0.05, beta=6.0)
    seen = []

    def closure(x_b, x_adv_b, y_b):
        seen.append((x_b, x_adv_b))
        return loss_fn(net, x_b, y_b, x_adv=x_adv_b)

    with attack_mode(net):
        x_adv = loss_fn.adversarial(net, x, y)
    base = torch.optim.SGD(net.parameters(), lr=0.01)
    before = [p.detach().clone() for p in net.parameters()]
    OTMDROptimizer(net, base, rho=0.05, seed=0).step(closure, x, x_adv, y)
    assert len(seen) == 3
    for x_b, x_adv_b in seen:  # every pass's rows of x_adv belong to its rows of x
        index = torch.cdist(x_b, x).argmin(1)
        torch.testing.assert_close(x_adv_b, x_adv[index])
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))


# -- WDAT per the paper: W-PGD-Budget on ReDLR --------------------------------------------------


def redlr_gradients(net: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x ReDLR`` by hand: ``DLR = -a / b`` with ``a = z_y - z_(2)``, ``b = z_y - z_(3)``
    on a correct example (``z_y = z_(1)``), so ``grad = -(b grad a - a grad b) / b^2``; zero on a
    misclassified one."""
    with torch.no_grad():
        z = net(x)
        order = z.argsort(-1, descending=True)
        w = net.weight
        second, third = w[order[:, 1]], w[order[:, 2]]
        a = z.gather(1, order[:, 1:2]).neg().squeeze(1) + z.gather(1, y[:, None]).squeeze(1)
        b = z.gather(1, order[:, 2:3]).neg().squeeze(1) + z.gather(1, y[:, None]).squeeze(1)
        grad_a, grad_b = w[y] - second, w[y] - third
        grads = -(b[:, None] * grad_a - a[:, None] * grad_b) / b[:, None].square()
        return torch.where((order[:, 0] == y)[:, None], grads, torch.zeros_like(grads))


def test_wdat_attack_leaves_misclassified_examples_exactly_where_they_are():
    net, x, y = linear_problem()  # every 5th example is misclassified
    wrong = net(x).argmax(-1) != y
    x_adv = WdatLoss(delta=0.05, steps=5).adversarial(net, x, y)
    assert wrong.sum() == 8
    assert torch.equal(x_adv[wrong], x[wrong])  # no gradient under ReDLR: no budget, no move
    assert (x_adv[~wrong] != x[~wrong]).any(1).all()  # every correct example moves
    ce_moves = WdatLoss(delta=0.05, steps=5, attack_loss="ce").adversarial(net, x, y)
    assert (ce_moves[wrong] != x[wrong]).any(1).all()  # CE, a departure, spends budget on them


def test_wdat_budget_follows_the_subset_mean_then_the_moving_average_by_hand():
    """``Upsilon_B`` of ReDLR by hand; the estimate is the mean of ``Upsilon_B^2`` over the
    first ``budget_subset`` batches, then the moving average; ``delta_B = delta Upsilon_B /
    Upsilon_hat``, and every attacked batch lies within ``W_2 <= delta_B``."""
    net, x, y = linear_problem()
    delta, subset, decay = 0.05, 3, 0.5
    objective = WdatLoss(delta=delta, steps=5, budget_subset=subset, decay=decay)
    estimate, squares = None, []
    for i, batch in enumerate(torch.arange(len(x)).split(8)):  # 5 batches
        by_hand = redlr_gradients(net, x[batch], y[batch]).abs().sum(1).square().mean()
        squares.append(float(by_hand))
        if i < subset:
            estimate = sum(squares) / len(squares)
        else:
            estimate = decay * estimate + (1 - decay) * squares[-1]
        x_adv = objective.adversarial(net, x[batch], y[batch])
        expected = delta * math.sqrt(squares[-1] / estimate)
        assert float(objective.last_budget) == pytest.approx(expected, rel=1e-9)
        assert float(objective.upsilon_sq) == pytest.approx(estimate, rel=1e-9)
        assert w_distance(x[batch], x_adv, p=2, cost="linf") <= float(objective.last_budget) * (
            1 + 1e-6
        )
    assert len(set(squares)) == len(squares)  # the batches do get different shares
    fresh = WdatLoss(delta=delta, budget_subset=subset, decay=decay)
    fresh.load_state_dict(objective.state_dict())
    assert float(fresh.batches_seen) == 5 and float(fresh.upsilon_sq) == pytest.approx(estimate)


def test_wdat_with_a_budget_subset_of_zero_is_the_moving_average_from_the_first_batch():
    objective = WdatLoss(delta=0.1, decay=0.75, budget_subset=0)
    assert float(objective.budget(torch.tensor(2.0, dtype=torch.float64))) == pytest.approx(0.1)
    second = objective.budget(torch.tensor(4.0, dtype=torch.float64))  # 0.75 * 4 + 0.25 * 16 = 7
    assert float(second) == pytest.approx(0.4 / math.sqrt(7.0))
    legacy = WdatLoss(delta=0.1, decay=0.75)  # a state saved before the count: the average
    legacy.load_state_dict({"upsilon_sq": torch.tensor(4.0, dtype=torch.float64)})
    assert float(legacy.budget(torch.tensor(4.0, dtype=torch.float64))) == pytest.approx(
        0.4 / math.sqrt(7.0)
    )


def test_wdat_outer_losses():
    net, x, y = linear_problem()
    x_adv = (x + 0.03).clamp(0, 1)
    adversarial = WdatLoss(delta=0.05, outer="adversarial")
    assert not adversarial.needs_clean
    torch.testing.assert_close(adversarial(net, x, y, x_adv=x_adv), ce(net(x_adv), y).mean())
    trades = WdatLoss(delta=0.05, beta=2.0)
    expected = ce(net(x), y).mean() + 2.0 * kl_to_clean(net(x), net(x_adv)).mean()
    torch.testing.assert_close(trades(net, x, y, x_adv=x_adv), expected)


def test_wdat_kl_attack_takes_the_budget_from_the_clean_ce():
    net, x, y = linear_problem()
    objective = WdatLoss(delta=0.05, attack_loss="kl")
    objective.adversarial(net, x, y)
    expected = ce_gradients(net, x, y).abs().sum(1).square().mean()
    assert float(objective.upsilon_sq) == pytest.approx(float(expected))
