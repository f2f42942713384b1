"""The step's guide handler: a point mass's log-density at its own sample is not recomputed."""

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta

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
