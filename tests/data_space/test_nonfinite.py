"""Non-finite input and loss: the attacks refuse NaN and infinity naming the entry, and every
data-robust loss, on its own or under OT-MDR, raises NonFiniteLossError with the parameters,
their gradients, Adam's state and WDAT's estimate untouched, validation on or off."""

import copy
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr import ARMOR, OTMDR, TRADES, WDAT, AdversarialTraining, NonFiniteLossError
from pyro_otmdr.attacks import ArmorLoss, TradesLoss, WdatLoss, pgd, w_fgsm, w_pgd, w_sensitivity
from pyro_otmdr.bayes import AutoDeltaEnsemble
from pyro_otmdr.data_space.common import NonFiniteValueError, check_box, check_inputs
from pyro_otmdr.evaluation import robustness

from .linear import linear_problem

D, C, N_TOTAL, B = 4, 3, 60, 12

LOSSES = {
    "at": lambda: AdversarialTraining(Trace_ELBO(), eps=0.05),
    "trades": lambda: TRADES(Trace_ELBO(), eps=0.05),
    "wdat": lambda: WDAT(Trace_ELBO(), delta=0.05),
    "armor": lambda: ARMOR(Trace_ELBO(), eps=0.05),
}

BAD_VALUES = [math.nan, math.inf, -math.inf]


@pytest.fixture(params=[True, False], ids=["validation", "no-validation"])
def validation(request):
    """Pyro's validation on or off for the test, restored after."""
    with pyro.validation_enabled(request.param):
        yield request.param


def linear_model(x, y=None):
    """Linear softmax regression ``logits = x W`` with a standard normal prior on ``W``."""
    w = pyro.sample("w", dist.Normal(torch.zeros(D, C, dtype=x.dtype), 1.0).to_event(2))
    with pyro.plate("data", N_TOTAL, subsample_size=len(x)):
        return pyro.sample("obs", dist.Categorical(logits=x @ w), obs=y)


def batch(seed, bad=None):
    """A float64 batch in [0, 1]; ``bad`` put at ``x[3, 1]`` (and at ``x[5, 0]``, later)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D, generator=generator, dtype=torch.float64)
    y = torch.randint(C, (B,), generator=generator)
    if bad is not None:
        x[3, 1] = x[5, 0] = bad
    return x, y


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def grads():
    store = pyro.get_param_store().named_parameters()
    return {k: None if v.grad is None else v.grad.clone() for k, v in store}


def assert_same(before, after):
    """Bit for bit, through dicts and lists of tensors (an optimiser's state)."""
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and torch.equal(before, after)
    elif isinstance(before, dict):
        assert before.keys() == after.keys()
        for key in before:
            assert_same(before[key], after[key])
    elif isinstance(before, list | tuple):
        assert len(before) == len(after)
        for b, a in zip(before, after, strict=True):
            assert_same(b, a)
    else:
        assert before == after


class Snapshot:
    """Everything a failed step must leave as it was."""

    def __init__(self, optim, robust):
        self.optim, self.robust = optim, robust
        self.params, self.grads = params(), grads()
        self.optim_state = copy.deepcopy(optim.get_state())
        self.objective = dict(vars(robust.objective))

    def assert_untouched(self):
        assert_same(self.params, params())
        assert_same(self.grads, grads())
        assert_same(self.optim_state, self.optim.get_state())
        for name, value in self.objective.items():
            assert vars(self.robust.objective)[name] is value, name


def trained(loss, guide, steps=3):
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = SVI(linear_model, guide, optim, loss=loss)
    for seed in range(steps):
        assert math.isfinite(svi.step(*batch(seed)))
    return svi, optim


def assert_still_trains(svi):
    before = params()
    assert math.isfinite(svi.step(*batch(99)))
    assert any(not torch.equal(before[k], v) for k, v in params().items())


# -- the attacks ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_VALUES)
def test_check_inputs_names_the_first_non_finite_entry(value):
    x = torch.rand(5, 1, 3, 3)
    x[3, 0, 2, 1] = x[4, 0, 0, 0] = value
    expected = f"x holds a non-finite value ({value}) at index (3, 0, 2, 1): attacks need finite "
    with pytest.raises(NonFiniteValueError, match=re.escape(expected + "inputs in the box [0, 1]")):
        check_inputs(x, torch.zeros(5, dtype=torch.long), (0.0, 1.0))
    with pytest.raises(ValueError) as error:
        check_box(x, (0.0, 1.0))
    assert error.value.index == (3, 0, 2, 1) and str(error.value.value) == str(value)


def test_check_box_still_tells_inputs_outside_the_box_and_compares_in_their_dtype():
    with pytest.raises(ValueError, match=r"outside the box \[0.0, 1.0\] \(min 0, max 1.5\)"):
        check_box(torch.tensor([[0.0, 1.5]], dtype=torch.float64), (0.0, 1.0))
    # float32(0.7) < 0.7 and float32(0.8) > 0.8: inside, as x < 0.7 and x > 0.8 say in float32
    edge = torch.tensor([[0.7, 0.8]], dtype=torch.float32)
    check_box(edge, (0.7, 0.8))
    check_box(torch.rand(3, 2).clamp(0.7, 0.8), (0.7, 0.8))


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


ATTACKS = {
    "pgd": lambda f, x, y: pgd(f, x, y, eps=0.05, steps=3),
    "w_pgd": lambda f, x, y: w_pgd(f, x, y, delta=0.05, steps=3),
    "w_fgsm": lambda f, x, y: w_fgsm(f, x, y, delta=0.05),
    "w_sensitivity": lambda f, x, y: w_sensitivity(f, x, y),
    "robustness": lambda f, x, y: robustness(
        f, None, x, y, threats=("w2-linf", "linf"), budgets=(0.05,), steps=2, progress=False
    ),
}


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_attack_refuses_a_non_finite_input_before_running_the_predictor(attack, value):
    net, x, y = linear_problem()
    x[7, 2] = x[9, 0] = value
    predict = Counting(net)
    match = re.escape(f"x holds a non-finite value ({value}) at index (7, 2)")
    with pytest.raises(ValueError, match=match):
        ATTACKS[attack](predict, x, y)
    assert predict.calls == 0


# -- the objectives in torch terms --------------------------------------------------------------


def test_an_objective_takes_a_nan_batch_for_a_non_finite_loss_to_skip():
    net, x, y = linear_problem()
    x[3, 1] = math.nan
    objective = WdatLoss(delta=0.05)
    objective(net, *linear_problem()[1:])
    state = objective.state_dict()["upsilon_sq"]
    with pytest.raises(NonFiniteLossError, match=r"non-finite input \(nan\) at index \(3, 1\)"):
        objective(net, x, y)
    assert objective.state_dict()["upsilon_sq"] is state
    with pytest.raises(NonFiniteLossError, match="skip this batch"):
        TradesLoss(eps=0.05)(net, x, y)
    assert all(p.grad is None for p in net.parameters())


def test_armor_loss_takes_a_non_finite_example_loss_for_a_non_finite_loss():
    logits = torch.zeros(4, C, dtype=torch.float64)
    adv = logits.clone()
    adv[2, 0] = math.nan
    with pytest.raises(NonFiniteLossError, match=r"ARMOR: the loss of example 2 is nan"):
        ArmorLoss(eps=0.05).losses(logits, adv, torch.zeros(4, dtype=torch.long))


def test_wdat_estimate_ignores_a_non_finite_sensitivity():
    objective = WdatLoss(delta=0.1, decay=0.5)
    objective.budget(torch.tensor(2.0, dtype=torch.float64))
    assert not torch.isfinite(objective.budget(torch.tensor(math.nan, dtype=torch.float64)))
    assert float(objective.upsilon_sq) == 4.0
    objective.budget(torch.tensor(4.0, dtype=torch.float64))
    assert float(objective.upsilon_sq) == pytest.approx(10.0)
    fresh = WdatLoss(delta=0.1)
    fresh.budget(torch.tensor(math.inf, dtype=torch.float64))  # no estimate yet: none to keep
    fresh.budget(torch.tensor(3.0, dtype=torch.float64))
    assert float(fresh.upsilon_sq) == 9.0


# -- the Pyro losses on their own -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_nan_batch_raises_and_leaves_every_state_untouched(name, validation):
    robust = LOSSES[name]()
    svi, optim = trained(robust, AutoNormal(linear_model, init_scale=0.05))
    kept = Snapshot(optim, robust)
    with pytest.raises(NonFiniteLossError, match=r"non-finite input \(nan\) at index \(3, 1\)"):
        svi.step(*batch(7, bad=math.nan))
    kept.assert_untouched()
    with pytest.raises(NonFiniteLossError, match=r"\(inf\) at index \(3, 1\)"):
        svi.step(*batch(7, bad=math.inf))
    kept.assert_untouched()
    assert_still_trains(svi)


def poison(robust, method="losses"):
    """Make the objective's ``method`` return NaN from now on, until the returned undo."""
    original = getattr(robust.objective, method)
    setattr(robust.objective, method, lambda *args: original(*args) * math.nan)
    return lambda: setattr(robust.objective, method, original)


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning, expected here
@pytest.mark.parametrize("name", list(LOSSES))
def test_a_nan_loss_raises_and_leaves_every_state_untouched(name, validation):
    robust = LOSSES[name]()
    svi, optim = trained(robust, AutoNormal(linear_model, init_scale=0.05))
    kept = Snapshot(optim, robust)
    undo = poison(robust)
    with pytest.raises(NonFiniteLossError, match=f"{type(robust).__name__}: the loss is nan"):
        svi.step(*batch(7))
    kept.assert_untouched()
    undo()
    assert_still_trains(svi)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_armor_non_finite_example_losses_leave_every_state_untouched(validation):
    robust = LOSSES["armor"]()
    svi, optim = trained(robust, AutoNormal(linear_model, init_scale=0.05))
    kept = Snapshot(optim, robust)
    undo = poison(robust, "transported_losses")
    with pytest.raises(NonFiniteLossError, match="ARMOR: the loss of example 0 is nan"):
        svi.step(*batch(7))
    kept.assert_untouched()
    undo()
    assert_still_trains(svi)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_an_ensemble_member_with_a_nan_loss_leaves_every_members_state_untouched():
    robust = LOSSES["wdat"]()
    svi, optim = trained(robust, AutoDeltaEnsemble(linear_model, num_members=2))
    kept = Snapshot(optim, robust)
    calls, original = [], robust.objective.losses

    def second_member_nan(*args):
        calls.append(1)
        return original(*args) * (math.nan if len(calls) == 2 else 1.0)

    robust.objective.losses = second_member_nan
    with pytest.raises(NonFiniteLossError, match="the loss is nan"):
        svi.step(*batch(7))
    kept.assert_untouched()
    robust.objective.losses = original
    assert_still_trains(svi)


def test_a_good_pass_adds_its_gradients_to_those_already_there():
    x, y = batch(0)
    loss, guide = LOSSES["at"](), AutoDelta(linear_model)
    guide(x, y)
    (leaf,) = [p for _, p in pyro.get_param_store().named_parameters()]
    pyro.set_rng_seed(3)
    loss.loss_and_grads(linear_model, guide, x, y)
    once = leaf.grad.clone()
    pyro.set_rng_seed(3)
    loss.loss_and_grads(linear_model, guide, x, y)
    torch.testing.assert_close(leaf.grad, 2 * once)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_the_torch_route_refuses_a_non_finite_loss_and_input(validation):
    x, y = batch(0)
    robust, guide = LOSSES["wdat"](), AutoNormal(linear_model, init_scale=0.05)
    assert math.isfinite(float(robust.differentiable_loss(linear_model, guide, x, y).detach()))
    state = robust.objective.state_dict()["upsilon_sq"]
    with pytest.raises(NonFiniteLossError, match=r"non-finite input \(nan\)"):
        robust.differentiable_loss(linear_model, guide, *batch(1, bad=math.nan))
    with pytest.raises(NonFiniteLossError, match=r"non-finite input \(-inf\)"):
        robust.loss(linear_model, guide, *batch(1, bad=-math.inf))
    poison(robust)
    with pytest.raises(NonFiniteLossError, match="WDAT: the loss is nan"):
        robust.differentiable_loss(linear_model, guide, x, y)
    assert robust.objective.state_dict()["upsilon_sq"] is state
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())


# -- under OT-MDR ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["trades", "wdat"])
def test_under_otmdr_a_nan_batch_raises_before_the_step_and_training_goes_on(name, validation):
    robust = LOSSES[name]()
    loss = OTMDR(robust, rho=0.05, n_particles=2, seed=0)
    svi, optim = trained(loss, AutoNormal(linear_model, init_scale=0.05))
    kept = Snapshot(optim, robust)
    attacks = robust.attacks
    with pytest.raises(NonFiniteLossError, match=r"non-finite input \(nan\) at index \(3, 1\)"):
        svi.step(*batch(7, bad=math.nan))
    kept.assert_untouched()
    assert robust.attacks == attacks
    assert_still_trains(svi)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_under_otmdr_a_nan_pass_of_a_per_pass_attack_restores_the_parameters(validation):
    robust = TRADES(Trace_ELBO(), eps=0.05, regenerate="per_pass")
    svi, optim = trained(OTMDR(robust, rho=0.05, seed=0), AutoNormal(linear_model, init_scale=0.05))
    kept = Snapshot(optim, robust)
    undo = poison(robust)
    with pytest.raises(NonFiniteLossError, match="TRADES: the loss is nan"):
        svi.step(*batch(7))
    kept.assert_untouched()
    undo()
    assert_still_trains(svi)
