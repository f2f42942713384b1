"""The unperturbed gradient of the parameters a step does not move, from half a pass.

Under the plate idiom ``L_B = (|B1| L_B1 + |B2| L_B2) / |B|``, so OT-MDR takes the scales' gradient
at the unperturbed sample from its first half (already evaluated there) and the second half,
instead of one more pass on the whole batch. These tests compare it with that whole-batch pass
(the previous way, run here by hand with the step's own ``kappa``) and check that every case where
the identity fails still pays the whole-batch pass.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_otmdr import OTMDR, AutoDeltaEnsemble
from pyro_otmdr.model_space.batching import split_in_halves
from pyro_otmdr.model_space.optim import OTMDROptimizer
from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise
from pyro_otmdr.model_space.subsampling import PlateScaling
from tests.model_space.test_elbo import DTYPE, N, data, init_values, make_model, theta_init

ELBOS = [Trace_ELBO, TraceMeanField_ELBO]


def counting(model, sizes):
    def counted(y):
        sizes.append(len(y))
        return model(y)

    return counted


def store_grads(names):
    store = pyro.get_param_store()
    return {name: store[name].unconstrained().grad.clone() for name in names}


def whole_batch_grads(elbo, model, guide, y, noise, names):
    """Today's extra pass: the whole batch at the unperturbed parameters, with the step's kappa."""
    fixed = FixedReparamNoise()
    fixed.noise = dict(noise)
    for name in names:
        pyro.get_param_store()[name].unconstrained().grad = None
    elbo.loss_and_grads(model, fixed(guide), y)
    return store_grads(names)


def assert_grads_close(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-6)


def expected_sizes(n, n_particles, last):
    return [n // 2, n - n // 2, n] * n_particles + [last]


@pytest.mark.parametrize("elbo", ELBOS)
@pytest.mark.parametrize("n", [8, 9])
@pytest.mark.parametrize("n_particles", [1, 2])
def test_autonormal_scales_from_halves_equal_the_whole_batch_pass(elbo, n, n_particles):
    y, model = data("cpu", n=n), make_model("cpu")
    guide = AutoNormal(model, init_loc_fn=init_values(theta_init("cpu")), init_scale=0.3)
    sizes = []
    loss = OTMDR(elbo(), rho=0.3, n_particles=n_particles, noise_std=0.01, seed=1)
    loss.loss_and_grads(counting(model, sizes), guide, y)
    # the first ascent move is on a random half; the scales cost half a pass, not a whole one
    assert sizes == expected_sizes(n, n_particles, last=n - n // 2)

    names = ["AutoNormal.scales.a", "AutoNormal.scales.b"]
    got = store_grads(names)
    expected = whole_batch_grads(elbo(), model, guide, y, loss.last_step.reparam_noise, names)
    assert_grads_close(got, expected)


@pytest.mark.parametrize("elbo", ELBOS)
@pytest.mark.parametrize("n", [8, 9])
def test_ensemble_members_fixed_parameters_from_halves(elbo, n):
    y, model = data("cpu", n=n), make_model("cpu")
    guide = AutoDeltaEnsemble(model, num_members=2)
    sizes = []
    loss = OTMDR(elbo(), rho=0.3, perturb=lambda name: not name.endswith(".b"), seed=2)
    loss.loss_and_grads(counting(model, sizes), guide, y)
    assert sizes == expected_sizes(n, 1, last=n - n // 2) * 2  # member by member

    for m in range(2):
        name = f"AutoDeltaEnsemble.members.{m}.b"
        got = store_grads([name])
        with guide.member(m):
            expected = whole_batch_grads(elbo(), model, guide, y, {}, [name])
        assert_grads_close(got, expected)


def test_elbo_module_scales_from_halves_equal_the_whole_batch_pass():
    y, model, sizes = data("cpu", n=9), make_model("cpu"), []
    with pyro.settings.context(module_local_params=True):
        guide = AutoNormal(model, init_loc_fn=init_values(theta_init("cpu")), init_scale=0.3)
        loss_fn = Trace_ELBO()(counting(model, sizes), guide)
        loss_fn(y)
        base = torch.optim.SGD(loss_fn.parameters(), lr=0.0)
        opt = OTMDROptimizer(loss_fn.named_parameters(), base, rho=0.3, seed=3)
        sizes.clear()
        pyro.set_rng_seed(7)  # kappa is the first draw of the step
        opt.compute_gradients(loss_fn, y)
        assert sizes == expected_sizes(9, 1, last=5)
        scales = [guide.scales.a_unconstrained, guide.scales.b_unconstrained]
        got = [p.grad.clone() for p in scales]
        for p in scales:
            p.grad = None
        pyro.set_rng_seed(7)
        with FixedReparamNoise():
            loss_fn(y).backward()
    for g, p in zip(got, scales, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=1e-6)


# -- where the identity does not hold: the whole-batch pass stays ------------------------------


def model_without_subsampling(y):
    theta = pyro.sample("a", dist.Normal(torch.zeros(2, dtype=DTYPE), 1.0).to_event(1))
    with pyro.plate("data", len(y)):  # sums the batch: halves do not average to the whole
        pyro.sample("obs", dist.Normal(theta, 1.0).to_event(1), obs=y[:, :2])


def model_with_a_factor(y):
    make_model("cpu")(y)
    pyro.factor("penalty", -(y**2).sum())  # outside the plate: not a per-example mean


@pytest.mark.parametrize(
    ("make", "options"),
    [
        (lambda: model_without_subsampling, {}),
        (lambda: model_with_a_factor, {}),
        (lambda: make_model("cpu"), {"split_batch": lambda a, k, g: split_in_halves(a, k, g)}),
    ],
    ids=["no-subsampling-plate", "factor-outside-the-plate", "custom-split"],
)
def test_the_whole_batch_pass_is_kept_where_halves_do_not_suffice(make, options):
    y, model = data("cpu", n=9), make()
    guide = AutoNormal(model, init_scale=0.3)
    guide(y)
    sizes = []
    loss = OTMDR(Trace_ELBO(), rho=0.3, seed=4, **options)
    loss.loss_and_grads(counting(model, sizes), guide, y)
    assert sizes == expected_sizes(9, 1, last=9)

    names = [n for n in pyro.get_param_store() if ".scales." in n]
    got = store_grads(names)
    expected = whole_batch_grads(Trace_ELBO(), model, guide, y, loss.last_step.reparam_noise, names)
    assert_grads_close(got, expected)


def test_batch_statistics_keep_the_whole_batch_pass():
    net = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3)).double()

    def model(y):
        pyro.module("net", net)
        w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=DTYPE), 1.0).to_event(1))
        with pyro.plate("data", size=N, subsample_size=len(y)):
            pyro.sample("obs", dist.Normal(net(y) + w, 1.0).to_event(1), obs=y[:, :3])

    y = data("cpu", n=8)
    guide = AutoNormal(model, init_scale=0.3)
    sizes = []
    OTMDR(Trace_ELBO(), rho=0.3, seed=5).loss_and_grads(counting(model, sizes), guide, y)
    assert sizes == expected_sizes(8, 1, last=8)


# -- the plate check itself ---------------------------------------------------------------------


def watch(model, y):
    scaling = PlateScaling(len(y))
    with scaling:
        pyro.poutine.trace(model).get_trace(y)
    return scaling.holds


def test_plate_scaling_recognises_the_plate_idiom_only():
    y = data("cpu", n=4)
    assert watch(make_model("cpu"), y)
    assert not watch(model_without_subsampling, y)
    assert not watch(model_with_a_factor, y)
    assert not watch(lambda y: pyro.sample("z", dist.Normal(0.0, 1.0)), y)  # nothing observed
