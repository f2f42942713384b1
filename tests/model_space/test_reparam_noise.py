"""The step's guide handler: a point mass's log-density at its own sample is not recomputed."""

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise
from tests.model_space.test_elbo import data, make_model


def test_point_mass_log_density_at_its_sample_is_pyros():
    y = data("cpu")
    guide = AutoDelta(make_model("cpu"))
    guide(y)
    trace = poutine.trace(FixedReparamNoise()(guide)).get_trace(y)
    for name in ("a", "b"):
        site = trace.nodes[name]
        reference = dist.Delta(site["fn"].v, event_dim=site["fn"].event_dim)
        assert torch.equal(site["fn"].log_prob(site["value"]), reference.log_prob(site["value"]))
        other = site["value"] + 1.0  # any other value: Pyro's own computation, log 0
        assert torch.equal(site["fn"].log_prob(other), reference.log_prob(other))
        assert site["fn"].log_prob(other).item() == float("-inf")


def test_normal_log_density_at_its_sample_is_pyros_value_and_gradient():
    y = data("cpu")
    guide = AutoNormal(make_model("cpu"), init_scale=0.3)
    guide(y)
    handler = FixedReparamNoise()
    trace = poutine.trace(handler(guide)).get_trace(y)
    for name in ("a", "b"):
        site = trace.nodes[f"{name}_unconstrained"]
        fn, value = site["fn"], site["value"]
        base = fn.base_dist
        reference = dist.Normal(base.loc, base.scale).to_event(1)
        assert isinstance(fn, dist.Independent) and fn.event_shape == reference.event_shape
        torch.testing.assert_close(value, base.loc + base.scale * handler.noise[site["name"]])
        got, expected = fn.log_prob(value), reference.log_prob(value)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        leaves = [
            guide.locs.get_parameter(name),
            guide.scales.get_parameter(f"{name}_unconstrained"),
        ]
        got_grads = torch.autograd.grad(got, leaves, retain_graph=True, allow_unused=True)
        expected_grads = torch.autograd.grad(expected, leaves, retain_graph=True)
        assert got_grads[0] is None  # log q at its own sample does not depend on loc ...
        torch.testing.assert_close(expected_grads[0], torch.zeros_like(leaves[0]))  # ... so 0
        torch.testing.assert_close(got_grads[1], expected_grads[1], rtol=1e-10, atol=1e-12)
        other = value + 0.5  # any other value: Pyro's own computation
        assert torch.equal(fn.log_prob(other), reference.log_prob(other))


def test_normal_noise_is_drawn_once_per_step():
    y = data("cpu")
    guide = AutoNormal(make_model("cpu"))
    guide(y)
    handler = FixedReparamNoise()
    first = poutine.trace(handler(guide)).get_trace(y)
    second = poutine.trace(handler(guide)).get_trace(y[:3])
    for name in ("a", "b"):
        assert torch.equal(first.nodes[name]["value"], second.nodes[name]["value"])
