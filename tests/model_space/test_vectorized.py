"""Vectorised particles (``Trace_ELBO(num_particles=K, vectorize_particles=True)``) under OT-MDR
and SAM: the fixed-noise distributions implement ``expand``, every guide family trains, each
particle has its own noise fixed for the step, and one vectorised particle is the unvectorised
step bit for bit.

The model is the analytic one of ``test_elbo`` (``theta ~ N(0, I)``, ``y_i ~ N(theta, I)`` in
the data plate), whose sites broadcast over a particle dimension.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from pyro_otmdr import OTMDR, SAM, AutoDeltaEnsemble, OTMDROptimizer
from pyro_otmdr.model_space import StepSavings
from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise
from tests.model_space.test_elbo import data, init_values, make_model, theta_init

FAMILIES = {
    "AutoDelta": lambda m: AutoDelta(m, init_loc_fn=init_values(theta_init("cpu"))),
    "AutoNormal": lambda m: AutoNormal(m, init_loc_fn=init_values(theta_init("cpu"))),
    "AutoDiagonalNormal": AutoDiagonalNormal,
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoLowRankMultivariateNormal": lambda m: AutoLowRankMultivariateNormal(m, rank=2),
    "AutoDeltaEnsemble": lambda m: AutoDeltaEnsemble(m, num_members=2),
}
GAUSSIAN = [name for name in FAMILIES if name not in ("AutoDelta", "AutoDeltaEnsemble")]
LOSSES = {
    "OTMDR": lambda elbo: OTMDR(elbo, rho=0.1, n_particles=2, seed=0),
    "SAM": lambda elbo: SAM(elbo, rho=0.1),
}


def set_up(guide, y):
    """Create the guide's parameters (every member's), so that a step draws only its noise."""
    members = guide.members if isinstance(guide, AutoDeltaEnsemble) else [guide]
    for member in members:
        member(y)


def train(family, loss, elbo, steps, lr=1e-3):
    """``steps`` SGD steps from the same start; the losses, the parameters and the loss."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, y = make_model("cpu"), data("cpu")
    guide = FAMILIES[family](model)
    set_up(guide, y)
    pyro.set_rng_seed(1)
    loss = LOSSES[loss](elbo)
    svi = SVI(model, guide, pyro.optim.SGD({"lr": lr}), loss=loss)
    losses = [svi.step(y) for _ in range(steps)]
    store = pyro.get_param_store()
    return losses, {name: store[name].detach().clone() for name in store}, loss


def vectorized(k, **kwargs):
    return Trace_ELBO(num_particles=k, vectorize_particles=True, **kwargs)


# -- the distributions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "site", "fixed_type"),
    [
        ("AutoNormal", "a_unconstrained", "_FixedNoiseNormal"),
        ("AutoDelta", "a", "_SelfDelta"),
        (
            "AutoMultivariateNormal",
            "_AutoMultivariateNormal_latent",
            "_FixedNoiseMultivariateNormal",
        ),
        (
            "AutoLowRankMultivariateNormal",
            "_AutoLowRankMultivariateNormal_latent",
            "_FixedNoiseLowRankMultivariateNormal",
        ),
    ],
)
def test_fixed_distributions_expand_over_a_particles_plate(family, site, fixed_type):
    model, y = make_model("cpu"), data("cpu")
    guide = FAMILIES[family](model)
    set_up(guide, y)
    particles = pyro.plate("particles", 4, dim=-2)  # as a vectorising ELBO wraps the guide
    trace = poutine.trace(particles(FixedReparamNoise()(guide))).get_trace(y)
    fn, sample = trace.nodes[site]["fn"], trace.nodes[site]["value"]
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    assert type(base).__name__ == fixed_type  # expanded by the plate, still the fixed kind
    assert fn.batch_shape[:2] == (4, 1) and sample.shape == fn.batch_shape + fn.event_shape
    if family != "AutoDelta":
        assert not torch.equal(sample[0], sample[1])  # each particle its own noise
    assert torch.equal(fn.rsample(), sample)  # fixed: the same noise at every draw
    given = type(base).__new__(type(base))  # torch's expand(batch_shape, _instance) contract
    assert base.expand(base.batch_shape, _instance=given) is given
    plain = fn.log_prob(sample.detach().clone())  # any other value: the base class's formula
    torch.testing.assert_close(fn.log_prob(sample), plain, rtol=1e-10, atol=1e-10)


# -- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("loss", list(LOSSES))
def test_vectorised_particles_train_under_every_guide_family(family, loss):
    losses, _, wrapper = train(family, loss, vectorized(4), steps=30)
    assert losses[-1] < 0.8 * losses[0]
    noise = wrapper.last_step.reparam_noise
    assert all(kappa.shape[0] == 4 for kappa in noise.values())  # a particle dimension
    assert bool(noise) == (family in GAUSSIAN)


@pytest.mark.parametrize("elbo", [TraceMeanField_ELBO, TraceGraph_ELBO])
def test_vectorised_particles_train_with_other_elbos(elbo):
    losses, _, _ = train("AutoNormal", "OTMDR", elbo(num_particles=3, vectorize_particles=True), 30)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("loss", list(LOSSES))
def test_one_vectorised_particle_is_the_unvectorised_step_bit_for_bit(family, loss):
    """With ``max_plate_nesting`` given, one vectorised particle runs the same passes on the same
    noise as ``Trace_ELBO()``: losses and parameters agree exactly, step after step."""
    plain_losses, plain_params, _ = train(family, loss, Trace_ELBO(), steps=3)
    losses, params, _ = train(family, loss, vectorized(1, max_plate_nesting=1), steps=3)
    assert losses == plain_losses
    assert params.keys() == plain_params.keys()
    for name, value in plain_params.items():
        assert torch.equal(params[name], value), name


@pytest.mark.parametrize("family", ["AutoDelta", "AutoDeltaEnsemble", "AutoNormal"])
def test_pyros_guess_of_the_plate_nesting_is_taken_before_the_step(family):
    """Without ``max_plate_nesting``, Pyro guesses it from one run of the model and guide the
    first time; the step lets it run before fixing any noise (else the guess would fix it at the
    unvectorised shape). That run draws the guide's random numbers as Pyro's own does, so only
    point masses, which draw none, still match the unvectorised step exactly."""
    plain_losses, plain_params, _ = train(family, "OTMDR", Trace_ELBO(), steps=2)
    losses, params, loss = train(family, "OTMDR", vectorized(1), steps=2)
    assert loss.elbo.max_plate_nesting == 1
    same = losses == plain_losses and all(torch.equal(params[n], plain_params[n]) for n in params)
    assert same == (family != "AutoNormal")
    losses, _, loss = train(family, "OTMDR", vectorized(3), steps=2)
    assert loss.elbo.max_plate_nesting == 2  # the particles' plate added


def test_each_particle_keeps_its_noise_for_the_whole_step():
    pyro.clear_param_store()
    model, y = make_model("cpu"), data("cpu")
    guide = AutoNormal(model, init_loc_fn=init_values(theta_init("cpu")), init_scale=0.3)
    seen = []

    def spy_guide(y):
        out = guide(y)
        seen.append(((out["a"] - guide.locs.a) / guide.scales.a).detach().clone())
        return out

    loss = OTMDR(vectorized(4), rho=0.3, n_particles=2, seed=0)
    svi = SVI(model, spy_guide, pyro.optim.SGD({"lr": 0.0}), loss=loss)
    svi.step(y)
    step = seen[1:]  # the first call is Pyro's guess of the plate nesting, unvectorised
    assert len(step) == 2 * 3 + 1  # two particles of three passes, one unperturbed pass
    assert step[0].shape == (4, 1, 2)  # four vectorised particles
    for kappa in step[1:]:
        torch.testing.assert_close(kappa, step[0])  # every pass of the step: the same kappa
    assert len({tuple(row.flatten().tolist()) for row in step[0]}) == 4  # one per particle
    torch.testing.assert_close(loss.last_step.reparam_noise["a_unconstrained"], step[0])
    svi.step(y)
    assert not torch.allclose(seen[-1], step[0])  # redrawn at the next step


def test_fixed_parameters_take_the_unperturbed_gradient_with_vectorised_particles():
    """The scales' gradient from the halves (the default) is the whole batch's at the centre
    (``StepSavings.none()`` pays that pass), with vectorised particles too."""
    grads = []
    for savings in (StepSavings(), StepSavings.none()):
        pyro.clear_param_store()
        model, y = make_model("cpu"), data("cpu", n=9)
        guide = AutoNormal(model, init_loc_fn=init_values(theta_init("cpu")), init_scale=0.3)
        guide(y)
        pyro.set_rng_seed(3)
        loss = OTMDR(vectorized(3), rho=0.3, n_particles=2, seed=1, savings=savings)
        loss.loss_and_grads(model, guide, y)
        store = pyro.get_param_store()
        grads.append({n: store[n].unconstrained().grad.clone() for n in store})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-6)


def test_vectorised_particles_through_the_torch_optimiser_route():
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(0)
        model, y = make_model("cpu"), data("cpu")
        guide = AutoNormal(model, init_loc_fn=init_values(theta_init("cpu")))
        loss_fn = vectorized(4)(model, guide)
        loss_fn(y)
        base = torch.optim.SGD(loss_fn.parameters(), lr=1e-3)
        opt = OTMDROptimizer(loss_fn.named_parameters(), base, rho=0.1, seed=0)
        losses = [opt.step(loss_fn, y) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0]
    assert opt.last_step.reparam_noise["a_unconstrained"].shape == (4, 1, 2)  # per particle


def test_a_gaussian_subclass_fixed_before_the_particles_plate_is_refused():
    """A site the handler cannot rebuild (here a subclass of Normal) gets its value before the
    particles' plate broadcasts it: refused by name, not silently shared by the particles."""

    class MyNormal(dist.Normal):
        pass

    def model(y):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(5, dtype=y.dtype), 1.0).to_event(1))
        with pyro.plate("data", size=50, subsample_size=len(y)):
            pyro.sample("obs", dist.Normal(theta, 1.0).to_event(1), obs=y)

    def guide(y):
        loc = pyro.param("loc", torch.zeros(5, dtype=y.dtype))
        pyro.sample("theta", MyNormal(loc, 0.1).to_event(1))

    pyro.clear_param_store()
    loss = OTMDR(vectorized(4), rho=0.1, seed=0)
    with pytest.raises(ValueError, match=r"guide site 'theta' is a .*vectori"):
        loss.loss_and_grads(model, guide, data("cpu"))
