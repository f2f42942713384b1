"""Bad input, failures inside a step, reproducibility and the optimisers OT-MDR runs with."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceGraph_ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch import nn

from pyro_otmdr import OTMDR, SAM, NonFiniteLossError
from tests.conftest import DEVICES
from tests.model_space.test_elbo import data, halves_in_order, make_model


def param_snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def assert_params_equal(before):
    after = param_snapshot()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": 0.0}, "rho must be"),
        ({"rho": -0.1}, "rho must be"),
        ({"rho": float("nan")}, "rho must be"),
        ({"rho": 0.05, "rho2": 0.0}, "rho2 must be"),
        ({"rho": 0.05, "rho2": -1.0}, "rho2 must be"),
        ({"rho": 0.05, "n_particles": 0}, "n_particles must be"),
        ({"rho": 0.05, "n_particles": 1.5}, "n_particles must be"),
        ({"rho": 0.05, "n_particles": True}, "n_particles must be"),
        ({"rho": 0.05, "noise_std": -1e-3}, "noise_std must be"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OTMDR(Trace_ELBO(), **kwargs)


@pytest.mark.parametrize("loss", [OTMDR, SAM])
def test_jit_elbos_it_does_not_compile_are_refused_with_the_alternative(loss):
    assert loss(JitTrace_ELBO(), rho=0.05).compiled is not None  # compiled (tests/.../test_jit.py)
    with pytest.raises(TypeError, match="wrap the non-jit version \\(TraceGraph_ELBO\\)"):
        loss(JitTraceGraph_ELBO(), rho=0.05)


def test_sam_checks_rho_and_wrapped_object():
    with pytest.raises(ValueError, match="rho must be"):
        SAM(Trace_ELBO(), rho=0)
    with pytest.raises(TypeError, match=r"pyro\.infer\.ELBO"):
        OTMDR(lambda m, g: 0.0, rho=0.05)


# -- failures inside a step --------------------------------------------------------------------


def trained_guide(model, y):
    guide = AutoNormal(model)
    SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=Trace_ELBO()).step(y)
    return guide


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("failing_pass", [1, 2, 3, 4])
def test_any_exception_leaves_parameters_bit_identical(device, failing_pass):
    y = data(device)
    inner = make_model(device)
    calls = {"n": 0}

    def model(y):
        calls["n"] += 1
        if calls["n"] == failing_pass:
            raise RuntimeError("boom")
        inner(y)

    guide = trained_guide(inner, y)
    before = param_snapshot()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=OTMDR(Trace_ELBO(), rho=0.5))
    with pytest.raises(RuntimeError, match="boom"):
        svi.step(y)
    assert_params_equal(before)
    for value in pyro.get_param_store().values():
        grad = value.unconstrained().grad
        assert grad is None or not grad.any()


@pytest.mark.parametrize(("bad_half", "pass_name"), [(0, "ascent step 1"), (1, "ascent step 2")])
def test_non_finite_loss_names_the_pass_and_restores(bad_half, pass_name):
    y = data("cpu")
    y[4 * bad_half] = 1e200  # its squared error overflows to inf in that half only
    model = make_model("cpu")
    guide = AutoDelta(model)
    SVI(model, guide, pyro.optim.SGD({"lr": 0.0}), loss=Trace_ELBO()).step(
        y[4:] if bad_half == 0 else y[:4]
    )
    before = param_snapshot()
    svi = SVI(
        model,
        guide,
        pyro.optim.SGD({"lr": 0.1}),
        loss=OTMDR(Trace_ELBO(), rho=0.1, split_batch=halves_in_order),
    )
    with pytest.raises(NonFiniteLossError, match=f"particle 1, {pass_name}"):
        svi.step(y)
    assert_params_equal(before)


def test_a_loop_can_skip_a_bad_batch_and_go_on():
    model = make_model("cpu")
    guide = AutoDelta(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=OTMDR(Trace_ELBO(), rho=0.1))
    good, bad = data("cpu"), data("cpu")
    bad[0] = 1e200
    losses = []
    for y in [good, bad, good, good]:
        try:
            losses.append(svi.step(y))
        except NonFiniteLossError:
            continue
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_batch_that_cannot_be_halved_is_refused_and_changes_nothing():
    model = make_model("cpu")
    guide = trained_guide(model, data("cpu"))
    before = param_snapshot()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss=OTMDR(Trace_ELBO(), rho=0.05))
    with pytest.raises(ValueError, match="two non-empty halves"):
        svi.step(data("cpu")[:1])
    assert_params_equal(before)


# -- BatchNorm ---------------------------------------------------------------------------------


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(x))


def bn_model(net):
    def model(x, y):
        pyro.module("net", net)
        with pyro.plate("data", size=100, subsample_size=len(x)):
            pyro.sample("obs", dist.Categorical(logits=net(x)), obs=y)

    return model


@pytest.mark.usefixtures("float64")  # BatchNorm's kernel against x.mean and x.var: in float64
@pytest.mark.parametrize(
    "loss", [OTMDR(Trace_ELBO(), rho=0.05, n_particles=2), SAM(Trace_ELBO(), rho=0.05)]
)
def test_batchnorm_statistics_move_once_per_step(loss):
    net = BatchNormNet()
    x, y = torch.randn(16, 4) * 3 + 2, torch.randint(0, 3, (16,))
    svi = SVI(bn_model(net), lambda x, y: None, pyro.optim.SGD({"lr": 0.1}), loss=loss)
    svi.step(x, y)
    # BatchNorm comes first, so one update from the whole batch is independent of the weights
    torch.testing.assert_close(net.bn.running_mean, 0.1 * x.mean(0))
    torch.testing.assert_close(net.bn.running_var, 0.9 + 0.1 * x.var(0))
    assert net.bn.num_batches_tracked.item() == 1


def test_batchnorm_statistics_are_restored_after_a_failure():
    net = BatchNormNet()
    inner = bn_model(net)
    calls = {"n": 0}

    def model(x, y):
        calls["n"] += 1
        inner(x, y)
        if calls["n"] == 3:
            raise RuntimeError("boom")

    x, y = torch.randn(16, 4) + 5, torch.randint(0, 3, (16,))
    svi = SVI(
        model, lambda x, y: None, pyro.optim.SGD({"lr": 0.1}), loss=OTMDR(Trace_ELBO(), rho=0.05)
    )
    with pytest.raises(RuntimeError):
        svi.step(x, y)
    assert torch.equal(net.bn.running_mean, torch.zeros(4))
    assert net.bn.num_batches_tracked.item() == 0


# -- optimisers, reproducibility, state --------------------------------------------------------


@pytest.mark.parametrize(
    "optim",
    [
        lambda: pyro.optim.Adam({"lr": 0.05}),
        lambda: pyro.optim.SGD({"lr": 0.001, "momentum": 0.9}),
        lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 10.0}),
        lambda: pyro.optim.ExponentialLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.99}
        ),
    ],
)
def test_trains_with_pyro_optimisers_and_schedulers(optim):
    y = data("cpu", n=16)
    model = make_model("cpu")
    optimiser = optim()
    svi = SVI(
        model, AutoNormal(model), optimiser, loss=OTMDR(Trace_ELBO(), rho=0.05, n_particles=2)
    )
    losses = []
    for _ in range(60):
        losses.append(svi.step(y))
        if isinstance(optimiser, pyro.optim.PyroLRScheduler):
            optimiser.step()
    assert sum(losses[-10:]) < sum(losses[:10])


def run_steps(loss, steps, y):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = make_model("cpu")
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), loss=loss)
    for _ in range(steps):
        svi.step(y)
    return param_snapshot()


def test_seeded_runs_are_reproducible_and_seeds_matter():
    y = data("cpu", n=16)
    kwargs = {"rho": 0.1, "n_particles": 2, "noise_std": 0.01}
    first = run_steps(OTMDR(Trace_ELBO(), seed=3, **kwargs), 5, y)
    second = run_steps(OTMDR(Trace_ELBO(), seed=3, **kwargs), 5, y)
    other = run_steps(OTMDR(Trace_ELBO(), seed=4, **kwargs), 5, y)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_state_dict_resumes_the_same_splits_and_noise():
    loss = OTMDR(Trace_ELBO(), rho=0.1, noise_std=0.01, seed=5)
    state = loss.state_dict()
    perm = torch.randperm(10, generator=loss.generator)
    resumed = OTMDR(Trace_ELBO(), rho=0.1, noise_std=0.01, seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(torch.randperm(10, generator=resumed.generator), perm)
