"""The data-robust Pyro losses: hand-derived values on a linear softmax model, every guide
family, composition with OT-MDR (one attack per step), the torch route, and bad input."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value

from pyro_otmdr import ARMOR, OTMDR, SAM, TRADES, WDAT, AdversarialTraining, NonFiniteLossError
from pyro_otmdr.attacks import armor_kl, ce, kl_to_clean
from pyro_otmdr.bayes import AutoDeltaEnsemble
from pyro_otmdr.data_space.elbo import PREPARED_KEY
from pyro_otmdr.model_space.optim import OTMDROptimizer

D, C, N_TOTAL, B = 4, 3, 60, 12

LOSSES = {
    "at": lambda **kw: AdversarialTraining(Trace_ELBO(), eps=0.05, **kw),
    "trades": lambda **kw: TRADES(Trace_ELBO(), eps=0.05, **kw),
    "wdat": lambda **kw: WDAT(Trace_ELBO(), delta=0.05, **kw),
    "wdat-adversarial": lambda **kw: WDAT(Trace_ELBO(), delta=0.05, outer="adversarial", **kw),
    "armor": lambda **kw: ARMOR(Trace_ELBO(), eps=0.05, **kw),
}


def linear_model(x, y=None):
    """Linear softmax regression ``logits = x W`` with a standard normal prior on ``W``."""
    w = pyro.sample("w", dist.Normal(torch.zeros(D, C), 1.0).to_event(2))
    with pyro.plate("data", N_TOTAL, subsample_size=len(x)):
        return pyro.sample("obs", dist.Categorical(logits=x @ w), obs=y)


def problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    w0 = torch.randn(D, C, generator=generator)
    x = torch.rand(B, D, generator=generator)
    y = torch.randint(C, (B,), generator=generator)
    return w0, x, y


def delta_guide(w0):
    return AutoDelta(linear_model, init_loc_fn=init_to_value(values={"w": w0.clone()}))


def prior_nll(w):
    return -float(dist.Normal(torch.zeros(D, C), 1.0).to_event(2).log_prob(w))


def grads_after(loss, guide, *args):
    pyro.clear_param_store()
    guide(*args)
    pyro.set_rng_seed(7)
    value = loss.loss_and_grads(linear_model, guide, *args)
    params = dict(pyro.get_param_store().named_parameters())
    return value, {k: v.grad.clone() for k, v in params.items()}


# -- hand-derived values ---------------------------------------------------------------------
# Checked in float64 (the ``float64`` fixture of tests/conftest.py): the tolerances are float64
# rounding with a wide margin (1e-9 to 1e-12), far below the size of any real bug, or say where
# they are analytic (a tiny radius, a finite difference).


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.parametrize("guide_kind", ["delta", "normal"])
def test_trades_with_beta_zero_is_the_wrapped_elbo(elbo, guide_kind):
    w0, x, y = problem()
    make = {
        "delta": lambda: delta_guide(w0),
        "normal": lambda: AutoNormal(linear_model, init_scale=0.1),
    }[guide_kind]
    plain, plain_grads = grads_after(elbo(), make(), x, y)
    robust, robust_grads = grads_after(TRADES(elbo(), eps=0.05, beta=0.0), make(), x, y)
    assert robust == pytest.approx(plain, rel=1e-10)
    for name in plain_grads:
        torch.testing.assert_close(robust_grads[name], plain_grads[name], rtol=1e-10, atol=1e-10)


@pytest.mark.usefixtures("float64")
def test_trades_adds_beta_n_times_the_mean_kl_at_the_step_inputs():
    w0, x, y = problem()
    guide = delta_guide(w0)
    loss = TRADES(Trace_ELBO(), eps=0.05, beta=6.0)
    _, kwargs = loss.prepare_step(linear_model, guide, (x, y), {})
    x_adv = kwargs[PREPARED_KEY]
    value = loss.loss(linear_model, guide, x, y, **kwargs)
    with torch.no_grad():
        clean_nll = N_TOTAL * float(ce(x @ w0, y).mean())
        kl = N_TOTAL * float(kl_to_clean(x @ w0, x_adv @ w0).mean())
    assert value == pytest.approx(prior_nll(w0) + clean_nll + 6.0 * kl, rel=1e-10)
    assert float((x_adv - x).abs().max()) <= 0.05 + 1e-12 and kl > 0


@pytest.mark.usefixtures("float64")
def test_adversarial_training_tends_to_the_wrapped_elbo_with_the_radius():
    w0, x, y = problem()
    plain = Trace_ELBO().loss(linear_model, delta_guide(w0), x, y)
    robust = AdversarialTraining(Trace_ELBO(), eps=1e-8).loss(linear_model, delta_guide(w0), x, y)
    assert robust == pytest.approx(plain, rel=1e-6)  # analytic: the loss moves by ~eps * |grad|
    wider = AdversarialTraining(Trace_ELBO(), eps=0.05).loss(linear_model, delta_guide(w0), x, y)
    assert wider > plain


@pytest.mark.usefixtures("float64")
def test_armor_is_n_times_the_dual_of_the_adversarial_losses_plus_the_prior():
    w0, x, y = problem()
    guide = delta_guide(w0)
    loss = ARMOR(Trace_ELBO(), eps=0.05, budget=0.05, kappa=0.0, mix=0.3)
    _, kwargs = loss.prepare_step(linear_model, guide, (x, y), {})
    value = loss.loss(linear_model, guide, x, y, **kwargs)
    with torch.no_grad():
        dual = armor_kl(ce(kwargs[PREPARED_KEY] @ w0, y), budget=0.05)
        robust = 0.3 * ce(x @ w0, y).mean() + 0.7 * dual.loss
    assert value == pytest.approx(prior_nll(w0) + N_TOTAL * float(robust), rel=1e-10)
    weights = loss.objective.last_dual.weights  # an interior root: KL(w || uniform) = budget
    assert float((weights * (weights * B).log()).sum()) == pytest.approx(0.05, rel=1e-9)


@pytest.mark.usefixtures("float64")
def test_armor_gradient_is_the_gradient_of_the_infimum_over_lambda():
    """The SVI gradient (lambda frozen) against central differences of the full robust loss,
    lambda re-solved at every point, at fixed adversarial inputs, in float64."""
    w0, x, y = problem()
    loss = ARMOR(Trace_ELBO(), eps=0.05, budget=0.1, kappa=0.05)
    guide = delta_guide(w0)
    guide(x, y)
    _, kwargs = loss.prepare_step(linear_model, guide, (x, y), {})
    loss.loss_and_grads(linear_model, guide, x, y, **kwargs)
    param = pyro.param("AutoDelta.w").unconstrained()
    analytic = param.grad.clone()
    numeric, h = torch.zeros_like(w0), 1e-5
    for index in range(w0.numel()):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                param.view(-1)[index] += sign * h
            values.append(loss.loss(linear_model, guide, x, y, **kwargs))
            with torch.no_grad():
                param.view(-1)[index] -= sign * h
        numeric.view(-1)[index] = (values[0] - values[1]) / (2 * h)
    # float64 central differences (|f| ~ 130): truncation h^2 |f'''| / 6 ~ 3e-11, rounding
    # eps |f| / h ~ 3e-9 (float32's best h would still leave ~1e-3, machine-dependent)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-6)


# -- every guide family, and OT-MDR on top ------------------------------------------------------


def bnn_guides(model):
    return {
        "delta": AutoDelta(model),
        "ensemble": AutoDeltaEnsemble(model, num_members=2),
        "normal": AutoNormal(model, init_scale=0.05),
    }


@pytest.mark.parametrize("guide_kind", ["delta", "ensemble", "normal"])
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("wrap", ["none", "otmdr", "sam"])
def test_every_loss_trains_every_guide_family_with_one_attack_per_step(guide_kind, name, wrap):
    _, x, y = problem()
    guide = bnn_guides(linear_model)[guide_kind]
    robust = LOSSES[name]()
    loss = {
        "none": robust,
        "otmdr": OTMDR(robust, rho=0.05, n_particles=2, seed=0),
        "sam": SAM(robust, rho=0.05),
    }[wrap]
    svi = SVI(linear_model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    losses = [svi.step(x, y) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    members = 2 if guide_kind == "ensemble" else 1
    assert robust.attacks == 3 * members


def test_regenerate_per_pass_attacks_at_every_pass():
    _, x, y = problem()
    robust = TRADES(Trace_ELBO(), eps=0.05, regenerate="per_pass")
    loss = OTMDR(robust, rho=0.05, n_particles=2, seed=0)
    SVI(linear_model, AutoDelta(linear_model), pyro.optim.Adam({"lr": 0.05}), loss=loss).step(x, y)
    assert robust.attacks == 6  # two halves and the whole batch, per particle


def test_under_otmdr_the_passes_use_the_steps_adversarial_inputs():
    """OT-MDR's passes see the rows of the one x_adv of the step: the whole-batch pass at the
    unperturbed point (rho tiny) gives the wrapped loss at those inputs."""
    w0, x, y = problem()
    robust = AdversarialTraining(Trace_ELBO(), eps=0.05)
    seen = []
    original = robust.elbo.loss_and_grads

    def spy(model, guide, *args, **kwargs):
        seen.append(args[0].clone())
        return original(model, guide, *args, **kwargs)

    robust.elbo.loss_and_grads = spy
    loss = OTMDR(robust, rho=1e-6, seed=0)
    SVI(linear_model, delta_guide(w0), pyro.optim.SGD({"lr": 0.0}), loss=loss).step(x, y)
    first, second, whole = seen
    assert len(first) + len(second) == B
    assert torch.equal(torch.cat([first, second]).sort(0).values, whole.sort(0).values)
    assert robust.attacks == 1 and not torch.equal(whole, x)


def test_armor_under_otmdr_gives_a_gaussian_guides_scales_a_whole_batch_pass():
    _, x, y = problem()
    robust = ARMOR(Trace_ELBO(), eps=0.05)
    calls = []
    original = robust.elbo.loss_and_grads
    robust.elbo.loss_and_grads = lambda *a, **k: calls.append(len(a[2])) or original(*a, **k)
    loss = OTMDR(robust, rho=0.05, seed=0)
    guide = AutoNormal(linear_model, init_scale=0.05)
    SVI(linear_model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss).step(x, y)
    assert calls == [B // 2, B // 2, B, B]  # not the half-batch shortcut: the dual couples them

    traded = TRADES(Trace_ELBO(), eps=0.05)
    calls.clear()
    original_trades = traded.elbo.loss_and_grads
    traded.elbo.loss_and_grads = lambda *a, **k: calls.append(len(a[2])) or original_trades(*a, **k)
    pyro.clear_param_store()
    guide = AutoNormal(linear_model, init_scale=0.05)
    loss = OTMDR(traded, rho=0.05, seed=0)
    SVI(linear_model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss).step(x, y)
    assert calls == [B // 2, B // 2, B, B // 2]  # per-example: the second half suffices


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", ["trades", "armor"])
def test_the_torch_route_equals_the_svi_route(name):
    w0, x, y = problem()
    with pyro.settings.context(module_local_params=False):
        guide = delta_guide(w0)
        guide(x, y)
        pyro.set_rng_seed(5)
        loss = OTMDR(LOSSES[name](), rho=0.1, seed=3)
        SVI(linear_model, guide, pyro.optim.SGD({"lr": 0.01}), loss=loss).step(x, y)
        expected = pyro.param("AutoDelta.w").detach().clone()
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=True):
        guide = delta_guide(w0)
        loss_fn = LOSSES[name]()(linear_model, guide)
        loss_fn(x, y)
        pyro.set_rng_seed(5)
        base = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
        OTMDROptimizer(loss_fn.named_parameters(), base, rho=0.1, seed=3).step(loss_fn, x, y)
        torch.testing.assert_close(guide.w.detach(), expected, rtol=0, atol=1e-12)
    assert loss_fn.elbo.attacks == 2  # the first call above, then once in the step


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: TRADES(Trace_ELBO(), eps=-0.1), ValueError, "eps must be"),
        (lambda: WDAT(Trace_ELBO(), delta=0), ValueError, "delta must be"),
        (lambda: ARMOR(Trace_ELBO(), budget=0), ValueError, "budget must be"),
        (lambda: TRADES(Trace_ELBO(), beta=-6), ValueError, "beta must be"),
        (lambda: ARMOR(Trace_ELBO(), mix=2), ValueError, "mix must be"),
        (lambda: TRADES(Trace_ELBO(), regenerate="never"), ValueError, "regenerate"),
        (lambda: TRADES(Trace_ELBO(), input_arg=1.5), TypeError, "input_arg"),
        (lambda: TRADES("elbo"), TypeError, "pyro.infer.ELBO"),
        (lambda: ARMOR(pyro.infer.JitTrace_ELBO()), TypeError, "non-jit"),
        (lambda: TRADES(pyro.infer.JitTraceGraph_ELBO()), TypeError, "jit"),
        (lambda: TRADES(Trace_ELBO(), eps=0.1, gamma=3), TypeError, "gamma"),
    ],
)
def test_bad_construction_says_what_to_do(make, error, match):
    with pytest.raises(error, match=match):
        make()


def regression_model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    with pyro.plate("data", N_TOTAL, subsample_size=len(x)):
        pyro.sample("obs", dist.Normal(x @ w, 1.0), obs=y)


@pytest.mark.parametrize(
    "model, args, kwargs, match",
    [
        (regression_model, "regression", {}, "need a classifier"),
        (linear_model, "outside", {}, "outside the box"),
        (linear_model, "plain", {"site": "y"}, "no observed site 'y'"),
        (linear_model, "plain", {"input_arg": 3}, "no input tensor"),
    ],
)
def test_bad_models_and_inputs_fail_at_the_first_step_with_parameters_untouched(
    model, args, kwargs, match
):
    _, x, y = problem()
    data = {
        "regression": (x, torch.randn(B)),
        "outside": (x + 1.5, y),
        "plain": (x, y),
    }[args]
    guide = AutoDelta(model)
    guide(*data)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    loss = OTMDR(TRADES(Trace_ELBO(), eps=0.05, **kwargs), rho=0.05)
    with pytest.raises(ValueError, match=match):
        SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=loss).step(*data)
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), before[name])


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning, expected here
def test_a_non_finite_loss_restores_the_parameters_bit_for_bit():
    w0, x, y = problem()
    robust = TRADES(Trace_ELBO(), eps=0.05)
    calls = []
    original = robust.objective.losses

    def poisoned(*args):
        calls.append(1)
        value = original(*args)
        return value * float("nan") if len(calls) == 3 else value

    robust.objective.losses = poisoned
    guide = delta_guide(w0)
    guide(x, y)
    before = pyro.param("AutoDelta.w").detach().clone()
    svi = SVI(linear_model, guide, pyro.optim.Adam({"lr": 0.1}), loss=OTMDR(robust, rho=0.05))
    with pytest.raises(NonFiniteLossError, match="full-batch"):
        svi.step(x, y)
    assert torch.equal(pyro.param("AutoDelta.w").detach(), before)


# -- compiled: OT-MDR and SAM over a data-robust loss of a jit ELBO ---------------------------


@pytest.mark.parametrize("name", ["at", "trades", "wdat"])
@pytest.mark.parametrize("kind", ["delta", "normal"])
def test_compiled_steps_over_a_data_robust_loss_equal_the_uncompiled_steps(name, kind):
    """Three steps (uncompiled, traced, compiled) of ``OTMDR(X(JitTrace_ELBO()))`` from the same
    start and seeds give the losses and gradients of ``OTMDR(X(Trace_ELBO()))``; the attack runs
    outside the graph. float32: a few roundings of the batch's sums."""
    make = {
        "at": lambda elbo: AdversarialTraining(elbo, eps=0.05, steps=3),
        "trades": lambda elbo: TRADES(elbo, eps=0.05, steps=3),
        "wdat": lambda elbo: WDAT(elbo, delta=0.05, steps=3),
    }[name]
    w0, x, y = problem()
    runs = []
    for elbo in (Trace_ELBO(), pyro.infer.JitTrace_ELBO()):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        if kind == "delta":
            guide = delta_guide(w0)
        else:
            guide = AutoNormal(linear_model, init_loc_fn=init_to_value(values={"w": w0.clone()}))
        guide(x, y)
        loss, store, trail = OTMDR(make(elbo), rho=0.1, seed=0), pyro.get_param_store(), []
        for _ in range(3):
            value = loss.loss_and_grads(linear_model, guide, x, y)
            grads = {k: store[k].unconstrained().grad.clone() for k in store}
            trail.append((value, grads))
            with torch.no_grad():
                for k in store:
                    leaf = store[k].unconstrained()
                    leaf -= 0.05 * leaf.grad
                    leaf.grad = None
        runs.append(trail)
    tol = 64 * torch.finfo(torch.float32).eps
    for (plain, plain_grads), (compiled, compiled_grads) in zip(*runs, strict=True):
        assert compiled == pytest.approx(plain, rel=tol)
        for k, grad in plain_grads.items():
            torch.testing.assert_close(compiled_grads[k], grad, rtol=tol, atol=tol)
