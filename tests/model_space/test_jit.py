"""OT-MDR and SAM over Pyro's jit ELBOs: the compiled step is the uncompiled step.

From the same parameters and seeds, a step with ``JitTrace_ELBO`` (``JitTraceMeanField_ELBO``)
and the same step with ``Trace_ELBO`` (``TraceMeanField_ELBO``) return the same losses and leave
the same gradients, step after step (the first pass of a batch shape runs uncompiled, a later one
traces its graph, the last steps only run graphs), for every guide family. The analytic model
of ``test_elbo`` runs in float64 (the jit traces it as it is), where rounding is far below the
tolerance; a ``bayesian()`` network with BatchNorm runs in float32, with a tolerance of a few
float32 roundings per term of its sums. A model the trace cannot follow is refused with the
error that names the uncompiled ELBO.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal

from pyro_otmdr import OTMDR, SAM, AutoDeltaEnsemble, EnsembleELBO, OTMDROptimizer, SAMOptimizer
from pyro_otmdr.bayes import bayesian
from pyro_otmdr.model_space import StepSavings
from pyro_otmdr.model_space.jit import JitTraceError
from tests.conftest import EPS32
from tests.model_space.test_elbo import data, init_values, make_model, theta_init

PAIRS = {
    "trace": (Trace_ELBO, JitTrace_ELBO),
    "mean-field": (TraceMeanField_ELBO, JitTraceMeanField_ELBO),
}
FAMILIES = {
    "AutoDelta": lambda m: AutoDelta(m, init_loc_fn=init_values(theta_init("cpu"))),
    "AutoNormal": lambda m: AutoNormal(
        m, init_loc_fn=init_values(theta_init("cpu")), init_scale=0.3
    ),
    "AutoLowRankMultivariateNormal": lambda m: AutoLowRankMultivariateNormal(
        m, init_loc_fn=init_values(theta_init("cpu")), init_scale=0.3, rank=2
    ),
    "AutoDeltaEnsemble": lambda m: AutoDeltaEnsemble(m, num_members=2),
}
LOSSES = {
    "otmdr": lambda elbo: OTMDR(elbo, rho=0.3, n_particles=2, noise_std=0.01, seed=1),
    "sam": lambda elbo: SAM(elbo, rho=0.3),
}
STEPS = 3  # uncompiled, traced, compiled


def steps(make_guide, loss, batches, lr=0.05):
    """Each step's loss and the gradient it left on every parameter, from a fixed start; the
    parameters move by SGD between steps (so later steps read moved parameters)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    model = make_model("cpu")
    guide = make_guide(model)
    set_up(guide, batches[0])
    store = pyro.get_param_store()
    losses, grads = [], []
    for y in batches:
        losses.append(loss.loss_and_grads(model, guide, y))
        grads.append({name: store[name].unconstrained().grad.clone() for name in store})
        with torch.no_grad():
            for name in store:
                leaf = store[name].unconstrained()
                leaf -= lr * leaf.grad
                leaf.grad = None
    return losses, grads


def set_up(guide, y):
    """Create the guide's parameters (each member's), so that no step's pass creates them."""
    for m in range(getattr(guide, "num_members", 0)):
        with guide.member(m):
            guide(y)
    guide(y)


def assert_same_steps(got, expected, rtol=1e-10, atol=1e-12):
    (got_losses, got_grads), (losses, grads) = got, expected
    assert got_losses == pytest.approx(losses, rel=rtol)
    for step, (g, e) in enumerate(zip(got_grads, grads, strict=True)):
        assert g.keys() == e.keys(), step
        for name in e:
            torch.testing.assert_close(g[name], e[name], rtol=rtol, atol=atol, msg=name)


#: every family under both methods (OT-MDR on an odd batch: halves of two sizes), and the
#: mean-field ELBO for the Gaussian guides
CASES = [
    *[(family, "otmdr", "trace", 9) for family in sorted(FAMILIES)],
    *[(family, "sam", "trace", 8) for family in sorted(FAMILIES)],
    ("AutoNormal", "otmdr", "mean-field", 8),
    ("AutoLowRankMultivariateNormal", "sam", "mean-field", 9),
]


@pytest.mark.parametrize(("family", "method", "elbo", "n"), CASES)
def test_compiled_steps_equal_the_uncompiled_steps(family, method, elbo, n):
    plain, jit = PAIRS[elbo]
    batches = [data("cpu", n=n, seed=s) for s in range(STEPS)]
    expected = steps(FAMILIES[family], LOSSES[method](plain()), batches)
    loss = LOSSES[method](jit())
    got = steps(FAMILIES[family], loss, batches)
    assert_same_steps(got, expected)
    assert loss.compiled.compilations > 0
    # the first pass of each shape (and member) ran uncompiled, every other pass was compiled
    members = 2 if family == "AutoDeltaEnsemble" else 1
    shapes = 1 if method == "sam" else 2 + n % 2  # the whole batch; and halves of one or two sizes
    assert loss.compiled.uncompiled_passes == members * shapes


def test_without_the_step_savings_compiled_steps_equal_the_uncompiled_steps_too():
    def loss(elbo):  # no closed-form log-density, no constants, no served values
        return OTMDR(elbo, rho=0.3, n_particles=2, seed=1, savings=StepSavings.none())

    batches = [data("cpu", n=9, seed=s) for s in range(STEPS)]
    expected = steps(FAMILIES["AutoNormal"], loss(Trace_ELBO()), batches)
    assert_same_steps(steps(FAMILIES["AutoNormal"], loss(JitTrace_ELBO()), batches), expected)


def test_the_epochs_last_smaller_batch_compiles_once_more_then_is_served_compiled():
    y = data("cpu", n=20)
    loss = OTMDR(JitTrace_ELBO(), rho=0.3, seed=0)
    model = make_model("cpu")
    guide = FAMILIES["AutoNormal"](model)
    set_up(guide, y[:8])
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 1e-3}), loss=loss)
    counts = []
    for _ in range(3):  # epochs of batches of 8, 8 and 4
        for batch in y.split(8):
            svi.step(batch)
        counts.append((loss.compiled.compilations, loss.compiled.uncompiled_passes))
    # one uncompiled pass per shape: 4 and 8 (the batches of 8), 2 (the last batch's halves; its
    # whole batch has the shape of the others' halves). AutoNormal: a graph of the halves with
    # and one without the scales' gradient, and one of the whole batch without: 3 for the batches
    # of 8, 2 more for the halves of 2
    assert counts[0] == (3 + 2, 3)
    assert counts[1] == counts[2] == counts[0]  # later epochs compile nothing


def test_past_max_shapes_new_shapes_run_uncompiled_with_one_warning():
    loss = SAM(JitTrace_ELBO(), rho=0.3)
    loss.compiled.max_shapes = 1
    model = make_model("cpu")
    guide = FAMILIES["AutoDelta"](model)
    set_up(guide, data("cpu", n=8))
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 1e-3}), loss=loss)
    svi.step(data("cpu", n=8))
    with pytest.warns(RuntimeWarning, match="more than 1 batch shapes"):
        svi.step(data("cpu", n=6))
    svi.step(data("cpu", n=5))  # one warning only
    assert loss.compiled.uncompiled_passes == 1 + 2 + 2


def test_a_cleared_param_store_compiles_afresh():
    def guide(y):  # pyro.param sites: a cleared store gives them new tensors
        a = pyro.param("a_loc", torch.zeros(2, dtype=torch.float64))
        b = pyro.param("b_loc", torch.ones(3, dtype=torch.float64))
        pyro.sample("a", dist.Delta(a).to_event(1))
        pyro.sample("b", dist.Delta(b).to_event(1))

    model, y = make_model("cpu"), data("cpu")
    expected = steps(lambda m: guide, SAM(Trace_ELBO(), rho=0.3), [y, y])
    loss = SAM(JitTrace_ELBO(), rho=0.3)
    steps(lambda m: guide, loss, [y, y])  # compiled, then ...
    got = steps(lambda m: guide, loss, [y, y])  # ... the store cleared: new parameters
    assert_same_steps(got, expected)
    assert loss.compiled.uncompiled_passes == 2  # one for each set of parameters
    del model


@pytest.mark.parametrize(("guide", "method"), [("AutoDelta", "otmdr"), ("AutoNormal", "sam")])
def test_a_batchnorm_network_in_float32_steps_as_uncompiled(guide, method):
    def run(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(6, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 3),
        )
        model = bayesian(net, num_data=100)
        loss = LOSSES[method](elbo)
        make = AutoDelta if guide == "AutoDelta" else AutoNormal
        svi = SVI(model, make(model), pyro.optim.Adam({"lr": 1e-2}), loss=loss)
        gen = torch.Generator().manual_seed(3)
        losses = []
        for _ in range(STEPS):
            x, y = torch.randn(10, 6, generator=gen), torch.randint(3, (10,), generator=gen)
            losses.append(svi.step(x, y))
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        return losses, params, {k: b.clone() for k, b in model.net.named_buffers()}

    (losses, params, buffers), (got, got_params, got_buffers) = (
        run(Trace_ELBO()),
        run(JitTrace_ELBO()),
    )
    # each loss sums ~500 float32 terms of size ~|loss|: a few roundings of each
    assert got == pytest.approx(losses, rel=64 * EPS32 * math.sqrt(500))
    for name, value in params.items():
        torch.testing.assert_close(got_params[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for name, value in buffers.items():  # running statistics: one update per step
        torch.testing.assert_close(got_buffers[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert buffers["1.num_batches_tracked"] == STEPS


def test_the_optimiser_route_compiles_an_elbo_module():
    def run(elbo, make_opt):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        with pyro.settings.context(module_local_params=True):
            model = make_model("cpu")
            guide = FAMILIES["AutoNormal"](model)
            loss_fn = elbo()(model, guide)
            Trace_ELBO()(model, guide)(data("cpu"))  # the guide's parameters
            base = torch.optim.SGD(loss_fn.parameters(), lr=1e-2)
            opt = make_opt(loss_fn, base)
            losses = [opt.step(loss_fn, data("cpu", n=9, seed=s)) for s in range(STEPS)]
            return losses, [p.detach().clone() for p in loss_fn.parameters()], opt

    for make_opt in (
        lambda f, b: OTMDROptimizer(f, b, rho=0.3, n_particles=2, seed=0),
        lambda f, b: SAMOptimizer(f, b, rho=0.3),
    ):
        losses, params, _ = run(Trace_ELBO, make_opt)
        got, got_params, opt = run(JitTrace_ELBO, make_opt)
        assert got == pytest.approx(losses, rel=1e-10)
        for p, q in zip(got_params, params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        assert opt.compiled.compilations > 0


def test_local_latent_variables_of_an_amortised_guide_compile():
    # a VAE: the guide's data plate draws its subsample before its z's noise, and each example's
    # noise follows its row into the halves; the compiled passes draw both in that order
    from tests.model_space.test_local_latents import TinyVAE, pixels

    def run(elbo, make_loss):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = TinyVAE()
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=make_loss(elbo))
        return [svi.step(batch) for _ in range(2) for batch in pixels(n=32).split(16)]

    for make_loss in (LOSSES["otmdr"], LOSSES["sam"]):
        expected = run(Trace_ELBO(), make_loss)
        # TinyVAE's guide checks a shape (the tracer warns): its warnings off
        got = run(JitTrace_ELBO(ignore_jit_warnings=True), make_loss)
        assert got == pytest.approx(expected, rel=64 * EPS32)


def test_vectorised_particles_compile():
    batches = [data("cpu", n=8, seed=s) for s in range(STEPS)]

    def loss(elbo):
        return OTMDR(elbo(num_particles=2, vectorize_particles=True), rho=0.3, seed=1)

    expected = steps(FAMILIES["AutoNormal"], loss(Trace_ELBO), batches)
    assert_same_steps(steps(FAMILIES["AutoNormal"], loss(JitTrace_ELBO), batches), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_ensemble_elbo_compiles_each_member_with_a_jit_elbo():
    def run(elbo):
        pyro.clear_param_store()
        model = make_model("cpu")
        guide = AutoDeltaEnsemble(model, num_members=2, init_loc_fn=init_values(theta_init("cpu")))
        svi = SVI(model, guide, pyro.optim.SGD({"lr": 1e-3}), loss=EnsembleELBO(elbo))
        losses = [svi.step(data("cpu", seed=s)) for s in range(STEPS)]
        return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    # Pyro's own jit ELBO, one per member (its tracer's warnings: Pyro's business)
    (losses, params), (got, got_params) = (
        run(Trace_ELBO()),
        run(JitTrace_ELBO(ignore_jit_warnings=True)),
    )
    assert got == pytest.approx(losses, rel=1e-10)
    assert got_params.keys() == params.keys()  # every member trained, not the first twice
    for name, value in params.items():
        torch.testing.assert_close(got_params[name], value, rtol=1e-10, atol=1e-12)


# -- what cannot be compiled -----------------------------------------------------------------------


def value_branching_model(y):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(5, dtype=y.dtype), 1.0).to_event(1))
    scale = 2.0 if y.sum() > 0 else 0.5  # Python control flow on a tensor's value
    with pyro.plate("data", 50, subsample_size=len(y)):
        pyro.sample("obs", dist.Normal(theta, scale).to_event(1), obs=y)


def site_counting_model(y):
    for i in range(int((y[:, 0] > 1).sum()) % 2 + 1):  # a number of sites that follows the data
        pyro.sample(f"extra_{i}", dist.Normal(torch.zeros(2, dtype=y.dtype), 1.0).to_event(1))
    theta = pyro.sample("theta", dist.Normal(torch.zeros(5, dtype=y.dtype), 1.0).to_event(1))
    with pyro.plate("data", 50, subsample_size=len(y)):
        pyro.sample("obs", dist.Normal(theta, 1.0).to_event(1), obs=y)


@pytest.mark.parametrize("model", [value_branching_model, site_counting_model])
@pytest.mark.parametrize("method", sorted(LOSSES))
def test_a_model_the_trace_cannot_follow_is_refused_naming_the_uncompiled_elbo(model, method):
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 1e-3}), loss=LOSSES[method](JitTrace_ELBO()))
    with pytest.raises(JitTraceError, match=r"use the uncompiled ELBO \(Trace_ELBO\)") as error:
        for seed in range(4):  # the first pass of a shape runs uncompiled, a later one traces
            before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
            svi.step(data("cpu", seed=seed) - 2.0 * (seed % 2))
    assert "test_jit.py" in str(error.value)  # the line of the model that froze a value
    store = pyro.get_param_store()
    for name, value in before.items():  # the step that raised restored the parameters
        assert torch.equal(store[name].detach(), value), name


def test_a_value_the_tracer_did_not_warn_about_is_caught_when_the_graph_is_reused():
    loss = SAM(JitTrace_ELBO(ignore_jit_warnings=True), rho=0.3)  # the tracer's warnings off
    svi = SVI(
        value_branching_model,
        AutoNormal(value_branching_model),
        pyro.optim.SGD({"lr": 0}),
        loss=loss,
    )
    with pytest.raises(JitTraceError, match=r"where the model gives .* on the same inputs"):
        for seed in range(4):
            svi.step(data("cpu", seed=seed) - 2.0 * (seed % 2))  # the branch changes
