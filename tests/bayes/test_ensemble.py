"""The uniform-mixture guide: names, members, the three losses, hand-derived member steps."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_value

from pyro_otmdr import OTMDR, SAM
from pyro_otmdr.bayes.ensemble import AutoDeltaEnsemble, EnsembleELBO
from pyro_otmdr.evaluation import evaluate
from tests.conftest import DEVICES
from tests.model_space.test_elbo import (
    ascend,
    data,
    grad,
    halves_in_order,
    make_model,
    otmdr_gradient,
)


def member_vector(m, name="AutoDeltaEnsemble"):
    store = pyro.get_param_store()
    return torch.cat([store[f"{name}.members.{m}.{s}"].detach().reshape(-1) for s in "ab"])


def starts(device, num_members):
    gen = torch.Generator().manual_seed(3)
    return [
        torch.randn(5, generator=gen, dtype=torch.float64).to(device) for _ in range(num_members)
    ]


def inits(thetas):
    return [init_to_value(values={"a": t[:2].clone(), "b": t[2:].clone()}) for t in thetas]


def test_members_start_apart_and_do_not_collide_with_other_guides():
    model = make_model("cpu")
    y = data("cpu")
    AutoDelta(model)(y)
    ensemble = AutoDeltaEnsemble(model, num_members=3)
    for m in range(3):
        ensemble.member_values(m, y)
    names = set(pyro.get_param_store().keys())
    assert {"AutoDelta.a", "AutoDelta.b"} <= names
    assert {f"AutoDeltaEnsemble.members.{m}.{s}" for m in range(3) for s in "ab"} <= names
    vectors = [member_vector(m) for m in range(3)]
    assert not torch.allclose(vectors[0], vectors[1])
    assert not torch.allclose(vectors[1], vectors[2])


@pytest.mark.parametrize(
    "loss",
    [
        lambda: EnsembleELBO(Trace_ELBO()),
        lambda: SAM(Trace_ELBO(), rho=0.05),
        lambda: OTMDR(Trace_ELBO(), rho=0.05, n_particles=2),
    ],
)
def test_one_step_updates_every_member(loss):
    model, y = make_model("cpu"), data("cpu")
    ensemble = AutoDeltaEnsemble(model, num_members=3)
    for m in range(3):
        ensemble.member_values(m, y)
    before = [member_vector(m) for m in range(3)]
    SVI(model, ensemble, pyro.optim.SGD({"lr": 1e-3}), loss=loss()).step(y)
    for m in range(3):
        assert not torch.equal(member_vector(m), before[m])


@pytest.mark.parametrize("device", DEVICES)
def test_otmdr_member_steps_match_hand_derivation(device):
    model, y = make_model(device), data(device)
    thetas = starts(device, 2)
    ensemble = AutoDeltaEnsemble(model, num_members=2, init_loc_fn=inits(thetas))
    loss = OTMDR(Trace_ELBO(), rho=0.3, split_batch=halves_in_order)
    SVI(model, ensemble, pyro.optim.SGD({"lr": 0.01}), loss=loss).step(y)
    for m, theta in enumerate(thetas):  # each member with its own gradient norm
        expected = theta - 0.01 * otmdr_gradient(theta, y, (y[:4], y[4:]), 0.3, 0.6)
        torch.testing.assert_close(member_vector(m), expected)


def test_sam_and_plain_ensemble_member_steps_match_hand_derivation():
    model, y = make_model("cpu"), data("cpu")
    thetas = starts("cpu", 2)
    ensemble = AutoDeltaEnsemble(model, num_members=2, init_loc_fn=inits(thetas))
    SVI(model, ensemble, pyro.optim.SGD({"lr": 0.01}), loss=SAM(Trace_ELBO(), rho=0.3)).step(y)
    after_sam = [member_vector(m) for m in range(2)]
    for theta, got in zip(thetas, after_sam, strict=True):
        torch.testing.assert_close(got, theta - 0.01 * grad(ascend(theta, grad(theta, y), 0.3), y))
    SVI(model, ensemble, pyro.optim.SGD({"lr": 0.01}), loss=EnsembleELBO(Trace_ELBO())).step(y)
    for m, theta in enumerate(after_sam):
        torch.testing.assert_close(member_vector(m), theta - 0.01 * grad(theta, y))


def test_failure_in_a_later_member_restores_every_member():
    model, y = make_model("cpu"), data("cpu")
    ensemble = AutoDeltaEnsemble(model, num_members=2)
    for m in range(2):
        ensemble.member_values(m, y)
    before = [member_vector(m) for m in range(2)]
    calls = {"n": 0}

    def failing_model(y):
        calls["n"] += 1
        if calls["n"] == 5:  # member 1, second ascent pass
            raise RuntimeError("boom")
        model(y)

    svi = SVI(
        failing_model, ensemble, pyro.optim.SGD({"lr": 0.1}), loss=OTMDR(Trace_ELBO(), rho=0.5)
    )
    with pytest.raises(RuntimeError, match="boom"):
        svi.step(y)
    for m in range(2):
        assert torch.equal(member_vector(m), before[m])


def test_predictive_draws_members_uniformly_and_evaluate_uses_each_once():
    model, y = make_model("cpu"), data("cpu")
    ensemble = AutoDeltaEnsemble(model, num_members=3)
    members = [ensemble.member_values(m, y)["a"] for m in range(3)]
    draws = Predictive(model, guide=ensemble, num_samples=60, return_sites=["a"])(y)["a"]
    hits = [(draws == member).all(-1).sum().item() for member in members]
    assert sum(hits) == 60 and min(hits) > 5


@pytest.mark.usefixtures("float64")  # the mean of the members' softmaxes, by hand, in float64
def test_evaluate_takes_every_member_once():
    def classifier(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(4, 3), 1.0).to_event(2))
        with pyro.plate("data", size=100, subsample_size=len(x)):
            pyro.sample("obs", dist.Categorical(logits=x @ w), obs=y)

    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    ensemble = AutoDeltaEnsemble(classifier, num_members=4)
    SVI(classifier, ensemble, pyro.optim.Adam({"lr": 0.05}), loss=EnsembleELBO(Trace_ELBO())).step(
        x, y
    )
    result = evaluate(classifier, ensemble, x, y)
    assert result.num_draws == 4
    expected = torch.stack(
        [(x @ ensemble.member_values(m, x)["w"]).softmax(-1) for m in range(4)]
    ).mean(0)
    torch.testing.assert_close(result.probs, expected.double())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_members": 0}, "num_members must be"),
        ({"num_members": 2.0}, "num_members must be"),
        ({"num_members": 3, "init_loc_fn": [init_to_value(values={})] * 2}, "one per member"),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        AutoDeltaEnsemble(make_model("cpu"), **kwargs)


def test_member_index_out_of_range():
    ensemble = AutoDeltaEnsemble(make_model("cpu"), num_members=2)
    with pytest.raises(IndexError, match="out of range"), ensemble.member(2):
        pass
