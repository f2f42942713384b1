"""A pass whose loss stays on its device: the same loss and gradients as Pyro's ``Trace_ELBO``
(``loss_and_grads`` for the SVI route, ``differentiable_loss`` for an ``ELBOModule`` closure),
without its per-site float conversions; other losses take their own methods."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr import OTMDR, SAM
from pyro_otmdr.model_space.device_loss import (
    differentiable_loss_on_device,
    loss_and_grads_on_device,
)
from pyro_otmdr.model_space.optim import OTMDROptimizer
from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise
from tests.model_space.test_elbo import DTYPE, data, make_model

GUIDES = [AutoDelta, AutoNormal]


def no_float_conversion(*args, **kwargs):
    raise AssertionError("a site's log-density was converted to a float")


def pass_grads(loss_and_grads):
    """The loss of one pass and the gradient it left on every parameter (fresh, same seed)."""
    store = pyro.get_param_store()
    names = list(store.get_all_param_names())
    for name in names:
        store[name].unconstrained().grad = None
    pyro.set_rng_seed(3)
    loss = loss_and_grads()
    return loss, {name: store[name].unconstrained().grad.clone() for name in names}


@pytest.mark.parametrize("make_guide", GUIDES)
@pytest.mark.parametrize("num_particles", [1, 2])
def test_trace_elbo_pass_equals_pyros_and_keeps_the_loss_a_tensor(make_guide, num_particles):
    y, model = data("cpu", n=9), make_model("cpu")
    guide = make_guide(model)
    guide(y)  # create the parameters
    guide = FixedReparamNoise()(guide)
    elbo = Trace_ELBO(num_particles=num_particles)
    expected, expected_grads = pass_grads(lambda: elbo.loss_and_grads(model, guide, y))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pyro.infer.trace_elbo.torch_item", no_float_conversion)
        got, got_grads = pass_grads(lambda: loss_and_grads_on_device(elbo, model, guide, (y,), {}))
    assert isinstance(got, torch.Tensor) and got.dim() == 0 and not got.requires_grad
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert got_grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-12, atol=1e-12)


def model_with_a_discrete_site(y):
    make_model("cpu")(y)
    pyro.sample("c", dist.Bernoulli(torch.tensor(0.3, dtype=DTYPE)))


def guide_with_a_score_function(y):
    p = pyro.param("p", torch.tensor(0.5, dtype=DTYPE), constraint=dist.constraints.unit_interval)
    pyro.sample("c", dist.Bernoulli(p))
    for name, size in (("a", 2), ("b", 3)):
        loc = pyro.param(f"loc_{name}", torch.zeros(size, dtype=DTYPE))
        pyro.sample(name, dist.Normal(loc, 1.0).to_event(1))


def test_score_function_site_takes_pyros_particle_loss():
    y = data("cpu")
    elbo = Trace_ELBO()
    guide_with_a_score_function(y)  # create the parameters
    expected, expected_grads = pass_grads(
        lambda: elbo.loss_and_grads(model_with_a_discrete_site, guide_with_a_score_function, y)
    )
    got, got_grads = pass_grads(
        lambda: loss_and_grads_on_device(
            elbo, model_with_a_discrete_site, guide_with_a_score_function, (y,), {}
        )
    )
    assert float(got) == pytest.approx(expected, rel=1e-12)
    for name, g in expected_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-12, atol=1e-12)


def test_other_elbos_take_their_own_loss_and_grads():
    y, model = data("cpu"), make_model("cpu")
    guide = AutoNormal(model)
    guide(y)
    guide = FixedReparamNoise()(guide)
    elbo = TraceMeanField_ELBO()
    expected, _ = pass_grads(lambda: elbo.loss_and_grads(model, guide, y))
    got, _ = pass_grads(lambda: loss_and_grads_on_device(elbo, model, guide, (y,), {}))
    assert isinstance(got, float) and got == expected


@pytest.mark.parametrize(
    "make_loss", [lambda: OTMDR(Trace_ELBO(), rho=0.1), lambda: SAM(Trace_ELBO(), rho=0.1)]
)
@pytest.mark.parametrize("make_guide", GUIDES)
def test_steps_convert_no_site_to_a_float(make_loss, make_guide):
    y, model = data("cpu", n=9), make_model("cpu")
    svi = SVI(model, make_guide(model), pyro.optim.SGD({"lr": 1e-3}), loss=make_loss())
    svi.step(y)  # set-up: Pyro's guide initialisation may convert
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pyro.infer.trace_elbo.torch_item", no_float_conversion)
        loss = svi.step(y)
    assert isinstance(loss, float)


@pytest.mark.parametrize("make_guide", GUIDES)
def test_differentiable_loss_equals_pyros_without_float_conversion(make_guide):
    y, model = data("cpu", n=9), make_model("cpu")
    guide = make_guide(model)
    guide(y)
    guide = FixedReparamNoise()(guide)
    elbo = Trace_ELBO()

    def backward(loss):
        loss.backward()
        return loss.detach()

    expected, expected_grads = pass_grads(
        lambda: backward(elbo.differentiable_loss(model, guide, y))
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pyro.infer.trace_elbo.torch_item", no_float_conversion)
        got, got_grads = pass_grads(
            lambda: backward(differentiable_loss_on_device(elbo, model, guide, (y,), {}))
        )
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    for name, g in expected_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-12, atol=1e-12)


def elbo_module_optimizer(y):
    model = make_model("cpu")
    with pyro.settings.context(module_local_params=True):
        guide = AutoNormal(model)
        loss_fn = Trace_ELBO()(model, guide)
        loss_fn(y)
    base = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
    return loss_fn, OTMDROptimizer(loss_fn.named_parameters(), base, rho=0.1, seed=0)


def test_elbo_module_closure_converts_no_site_to_a_float():
    y = data("cpu", n=9)
    loss_fn, opt = elbo_module_optimizer(y)
    with pytest.MonkeyPatch.context() as patch, pyro.settings.context(module_local_params=True):
        patch.setattr("pyro.infer.trace_elbo.torch_item", no_float_conversion)
        loss = opt.step(loss_fn, y)
    assert isinstance(loss, float)


def test_elbo_module_with_a_hook_is_called_as_a_module():
    y, calls = data("cpu", n=9), []
    loss_fn, opt = elbo_module_optimizer(y)
    loss_fn.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    with pyro.settings.context(module_local_params=True):
        opt.step(loss_fn, y)
    assert calls == [4, 5, 9, 5]  # both halves, the whole batch, the scales' half
