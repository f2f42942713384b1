"""WrapperELBO: what every wrapper ELBO shares (delegation, members, nested state, the contract
of a loss that prepares a step), and that the package's wrappers stand on it."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO

from pyro_otmdr import OTMDR, SAM, TRADES, WDAT, AutoDeltaEnsemble, EnsembleELBO
from pyro_otmdr.bayes import PreparesStep, WrapperELBO


def model(y=None):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


class Stateful(WrapperELBO):
    """A wrapper with a state of its own, counting its steps."""

    def __init__(self, elbo):
        super().__init__(elbo)
        self.steps = 0

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self.steps += 1
        return self.per_member(guide, lambda: self.elbo.loss_and_grads(model, guide, *args))

    def own_state_dict(self):
        return {"steps": self.steps}

    def load_own_state_dict(self, state):
        self.steps = state["steps"]


def test_the_package_wrappers_stand_on_the_base():
    inner = Trace_ELBO()
    for loss in (EnsembleELBO(inner), OTMDR(inner, rho=0.1), SAM(inner, rho=0.1)):
        assert isinstance(loss, WrapperELBO) and loss.elbo is inner
    for loss in (TRADES(inner, eps=0.1), WDAT(inner, delta=0.1)):
        assert isinstance(loss, WrapperELBO) and isinstance(loss, PreparesStep)
    assert not isinstance(OTMDR(inner, rho=0.1), PreparesStep)


def test_state_nests_through_the_stack_and_loads_back():
    stack = Stateful(Stateful(Trace_ELBO()))
    stack.steps, stack.elbo.steps = 3, 7
    state = stack.state_dict()
    assert state == {"steps": 3, "elbo": {"steps": 7}}
    fresh = Stateful(Stateful(Trace_ELBO()))
    fresh.load_state_dict(state)
    assert (fresh.steps, fresh.elbo.steps) == (3, 7)
    fresh.load_state_dict({"steps": 1})  # a state saved before the nesting: the outer only
    assert (fresh.steps, fresh.elbo.steps) == (1, 7)


def test_otmdr_nests_wdat_s_estimate_under_its_generators():
    wdat = WDAT(Trace_ELBO(), delta=0.1)
    wdat.objective.upsilon_sq = torch.tensor(2.5)
    state = OTMDR(wdat, rho=0.1, seed=0).state_dict()
    assert set(state) == {"generator", "device_generators", "elbo"}
    assert state["elbo"] == {"upsilon_sq": torch.tensor(2.5), "batches_seen": None}
    assert set(OTMDR(Trace_ELBO(), rho=0.1).state_dict()) == {"generator", "device_generators"}


def test_per_member_runs_once_for_a_guide_and_once_per_member_for_an_ensemble():
    y = torch.randn(4)
    ensemble = AutoDeltaEnsemble(model, num_members=3)
    loss = Stateful(Trace_ELBO())
    calls = []
    total = loss.per_member(ensemble, lambda: calls.append(1) or 2.0)
    assert calls == [1, 1, 1] and total == 6.0
    assert loss.per_member(model, lambda: 5) == 5
    ensemble(y)
    assert loss.loss_and_grads(model, ensemble, y) == pytest.approx(
        sum(
            Trace_ELBO().loss(model, _member(ensemble, m), y) for m in range(3)
        ),  # Trace_ELBO is deterministic for point masses
        rel=1e-6,
    )


def _member(ensemble, index):
    def guide(*args, **kwargs):
        with ensemble.member(index):
            return ensemble(*args, **kwargs)

    return guide


def test_bad_inner_losses_are_refused_with_what_to_wrap():
    with pytest.raises(TypeError, match=r"Stateful expects a pyro.infer.ELBO"):
        Stateful(lambda *a: 0.0)
    with pytest.raises(TypeError, match="wrap the non-jit version"):
        Stateful(JitTrace_ELBO())
    assert EnsembleELBO(JitTrace_ELBO()).elbo  # every member's pass has the batch's shape
