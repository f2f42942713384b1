"""Passes whose gradient for the parameters that are not perturbed is thrown away treat them as
constants: the step engine turns their ``requires_grad`` off there, and the SVI route serves their
constrained values from the step's first pass. Nothing the step returns may change: losses and
every gradient equal the step with these savings (and the other savings of
:class:`~pyro_otmdr.model_space.StepSavings`) switched off, all at once and one by one."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_otmdr import OTMDR, SAM, AutoDeltaEnsemble, NonFiniteLossError
from pyro_otmdr.model_space import StepSavings
from pyro_otmdr.model_space.constant_params import ConstantParams
from pyro_otmdr.model_space.optim import OTMDROptimizer
from tests.model_space.test_elbo import data, init_values, make_model, theta_init

LOSSES = {
    "otmdr": lambda elbo, savings=None: OTMDR(
        elbo, rho=0.3, n_particles=2, noise_std=0.01, seed=1, savings=savings
    ),
    "sam": lambda elbo, savings=None: SAM(elbo, rho=0.3, savings=savings),
}

#: The step without its savings: all of them off, and each one off alone.
REFERENCES = {
    "none": StepSavings.none(),
    **{f"no-{name}": StepSavings(**{name: False}) for name in StepSavings.names()},
}


def step_grads(make_guide, make_loss, elbo, y):
    """The loss of one step from fresh parameters and the gradient it left on each of them."""
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    model = make_model("cpu")
    guide = make_guide(model)
    guide(y)
    loss = make_loss(elbo()).loss_and_grads(model, guide, y)
    store = pyro.get_param_store()
    return loss, {name: store[name].unconstrained().grad.clone() for name in store}


def autonormal(model):
    return AutoNormal(model, init_loc_fn=init_values(theta_init("cpu")), init_scale=0.3)


def ensemble(model):
    return AutoDeltaEnsemble(model, num_members=2)


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.parametrize("method", sorted(LOSSES))
@pytest.mark.parametrize("n", [8, 9])
def test_autonormal_step_is_unchanged_by_the_savings(elbo, method, n, reference):
    y = data("cpu", n=n)
    got, got_grads = step_grads(autonormal, LOSSES[method], elbo, y)
    without = REFERENCES[reference]
    expected, expected_grads = step_grads(autonormal, lambda e: LOSSES[method](e, without), elbo, y)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got_grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-10, atol=1e-12)


def test_ensemble_with_fixed_parameters_is_unchanged_by_the_savings():
    y = data("cpu", n=9)

    def make_loss(elbo, savings=None):
        fixed_b = lambda n: not n.endswith(".b")  # noqa: E731
        return OTMDR(elbo, rho=0.3, n_particles=2, perturb=fixed_b, seed=2, savings=savings)

    got, got_grads = step_grads(ensemble, make_loss, Trace_ELBO, y)
    off = StepSavings.none()
    expected, expected_grads = step_grads(ensemble, lambda e: make_loss(e, off), Trace_ELBO, y)
    assert got == pytest.approx(expected, rel=1e-12)
    for name, g in expected_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("method", "served"), [("otmdr", 2 + 3), ("sam", 1)])
def test_fixed_parameters_are_served_only_in_passes_that_drop_their_gradient(method, served):
    """OT-MDR (K=2): every pass but the first particle's first half and the scales' half;
    SAM: its pass at the perturbed point. Each serves the two scales."""
    y, calls = data("cpu"), []
    original = ConstantParams._pyro_param

    def counting(self, msg):
        original(self, msg)
        if msg["value"] is not None:
            calls.append(msg["name"])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ConstantParams, "_pyro_param", counting)
        step_grads(autonormal, LOSSES[method], Trace_ELBO, y)
    assert sorted(set(calls)) == ["AutoNormal.scales.a", "AutoNormal.scales.b"]
    assert len(calls) == 2 * served
    off = StepSavings(served_constants=False)
    with pytest.MonkeyPatch.context() as patch:  # the saving off serves none
        patch.setattr(ConstantParams, "_pyro_param", counting)
        calls.clear()
        step_grads(autonormal, lambda e: LOSSES[method](e, off), Trace_ELBO, y)
    assert calls == []


class SizeLoggingELBO(Trace_ELBO):
    """A ``Trace_ELBO`` that logs the batch size of every pass."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self.sizes.append(len(args[0]))
        return super().loss_and_grads(model, guide, *args, **kwargs)


@pytest.mark.parametrize(("center_from_halves", "center"), [(True, 4), (False, 8)])
def test_the_center_gradient_takes_half_a_pass_from_the_halves(center_from_halves, center):
    """OT-MDR K=1 on 8 examples: halves 4 + 4, the full batch 8, then the scales' gradient at
    the center from the second half (4 examples) or from a whole-batch pass (8)."""
    elbo = SizeLoggingELBO()
    savings = StepSavings(center_from_halves=center_from_halves, loss_on_device=False)
    loss = OTMDR(elbo, rho=0.3, seed=1, savings=savings)
    step_grads(autonormal, lambda e: loss, Trace_ELBO, data("cpu", n=8))
    assert elbo.sizes == [4, 4, 8, center]


def test_savings_must_be_step_savings():
    with pytest.raises(TypeError, match="savings must be a StepSavings"):
        OTMDR(Trace_ELBO(), rho=0.1, savings={"frozen_constants": False})


def test_parameters_require_grad_after_a_step_and_after_a_failed_one():
    y = data("cpu")
    model = make_model("cpu")
    guide = autonormal(model)
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.01}), loss=LOSSES["otmdr"](Trace_ELBO()))
    svi.step(y)
    params = [pyro.get_param_store()[n].unconstrained() for n in pyro.get_param_store()]
    assert params and all(p.requires_grad for p in params)
    bad = y.clone()
    bad[-1] = 1e200  # overflows in a pass at a perturbed point
    with pytest.raises(NonFiniteLossError):
        svi.step(bad)
    assert all(p.requires_grad for p in params)


@pytest.mark.usefixtures("float64")  # like the model of the tests above: rtol 1e-10 is float64
def test_torch_route_fixed_parameters_are_unchanged_by_the_savings():
    gen = torch.Generator().manual_seed(0)
    x, target = torch.randn(9, 3, generator=gen), torch.randn(9, 1, generator=gen)

    def run(savings=None):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        opt = OTMDROptimizer(
            net.named_parameters(),
            torch.optim.SGD(net.parameters(), lr=0.0),
            rho=0.2,
            n_particles=2,
            perturb=lambda name: name == "weight",
            seed=4,
            savings=savings,
        )
        loss = opt.compute_gradients(lambda x, t: ((net(x) - t) ** 2).mean(), x, target)
        assert all(p.requires_grad for p in net.parameters())
        return loss, [p.grad.clone() for p in net.parameters()]

    got, got_grads = run()
    expected, expected_grads = run(StepSavings.none())
    assert got == pytest.approx(expected, rel=1e-12)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
