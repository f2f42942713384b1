"""The unperturbed gradient of the parameters a step does not move (:mod:`.center_gradient`).

First :class:`CenterGradient` on its own, on a torch quadratic: SAM's ascent gradient kept, the
two halves combined, the whole-batch pass wherever the halves do not suffice, and the frozen
constants. Then through OT-MDR: under the plate idiom ``L_B = (|B1| L_B1 + |B2| L_B2) / |B|``, so
OT-MDR takes the scales' gradient at the unperturbed sample from its first half (already
evaluated there) and the second half, instead of one more pass on the whole batch. These tests
compare it with that whole-batch pass (the previous way, run here by hand with the step's own
``kappa``) and check that every case where the identity fails still pays the whole-batch pass.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_otmdr import OTMDR, AutoDeltaEnsemble
from pyro_otmdr.model_space import StepSavings
from pyro_otmdr.model_space.batching import split_in_halves
from pyro_otmdr.model_space.center_gradient import CenterGradient, frozen_constants
from pyro_otmdr.model_space.optim import OTMDROptimizer
from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise
from pyro_otmdr.model_space.step import ParamGroups
from pyro_otmdr.model_space.subsampling import PlateScaling
from tests.model_space.test_elbo import DTYPE, N, data, init_values, make_model, theta_init

ELBOS = [Trace_ELBO, TraceMeanField_ELBO]


# -- CenterGradient on its own ------------------------------------------------------------------


class Quadratic:
    """``L_b = sum_i (|theta - y_i|^2 + |phi - y_i|^2) / (2 d_b)`` with ``d_b = |b|`` (a mean
    over examples) or ``d_b = 4`` (not one): ``grad_phi L_B = |B| / d_B * phi - sum_B y / d_B``,
    a per-example mean only in the first case. Records each pass's label and batch size."""

    def __init__(self, n=9, mean=True, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.rows = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        self.theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        self.phi = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
        self.mean = mean
        self.whole = ((self.rows,), {})
        self.halves = [((self.rows[:4],), {}), ((self.rows[4:],), {})]
        self.passes = []

    @property
    def params(self):
        return ParamGroups([self.theta], [self.phi])

    def evaluate(self, batch, label):
        (y,), _ = batch
        self.passes.append((label, len(y)))
        d = len(y) if self.mean else 4
        loss = ((self.theta - y).pow(2).sum() + (self.phi - y).pow(2).sum()) / (2 * d)
        loss.backward()
        return loss.detach()

    def center_grad(self):
        """``grad_phi L_B`` at the centre, by hand."""
        d = len(self.rows) if self.mean else 4
        return (len(self.rows) * self.phi.detach() - self.rows.sum(0)) / d

    def step(self, center, ascent_batches, batch_stats=False):
        """The calls a step makes, one particle, its perturbed point left out (theta is 0)."""
        with center.frozen(unless=True):
            self.evaluate(ascent_batches[0], "first ascent pass")
        center.after_first_ascent(ascent_batches)
        self.theta.grad = None  # the ascent move uses and zeroes it
        for batch in ascent_batches[1:]:
            with center.frozen():
                self.evaluate(batch, "ascent pass")
        with center.frozen():
            self.evaluate(self.whole, "descent pass")
        center.after_descent()
        descent = self.theta.grad.clone()
        center.finish(self.evaluate, batch_stats)
        assert torch.equal(self.theta.grad, descent)  # set aside around the centre's pass
        return [size for _, size in self.passes[2 + len(ascent_batches) - 1 :]]


def test_sam_keeps_its_ascent_gradient_and_evaluates_nothing_more():
    q = Quadratic()
    center = CenterGradient(q.params, q.whole, mean_over_examples=lambda: pytest.fail("asked"))
    assert q.step(center, [q.whole]) == []  # no pass after the descent
    torch.testing.assert_close(q.phi.grad, q.center_grad(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [8, 9])
def test_otmdr_combines_the_two_halves_at_the_centre(n):
    q = Quadratic(n=n)
    center = CenterGradient(q.params, q.whole, mean_over_examples=lambda: True)
    assert q.step(center, q.halves) == [n - 4]  # the second half only
    torch.testing.assert_close(q.phi.grad, q.center_grad(), rtol=1e-15, atol=1e-15)


def test_mean_over_examples_is_asked_once_at_the_end():
    q, asked = Quadratic(), []
    center = CenterGradient(q.params, q.whole, mean_over_examples=lambda: asked.append(1) or True)
    with center.frozen(unless=True):
        q.evaluate(q.halves[0], "first ascent pass")
    center.after_first_ascent(q.halves)
    assert asked == []  # the Pyro route knows only after the first pass
    center.finish(q.evaluate)
    assert asked == [1]


def unpartitioned(q):
    return [q.halves[0], ((q.rows[5:],), {})]


@pytest.mark.parametrize(
    ("case", "options", "batches", "batch_stats"),
    [
        ("not a mean over examples", {"mean_over_examples": lambda: False}, None, False),
        ("not told", {}, None, False),
        ("saving off", {"savings": StepSavings(center_from_halves=False)}, None, False),
        ("batch statistics", {}, None, True),
        ("rank-local ascent", {"rank_local": True}, None, False),
        ("halves do not partition the batch", {}, unpartitioned, False),
    ],
)
def test_the_whole_batch_is_evaluated_where_the_halves_do_not_suffice(
    case, options, batches, batch_stats
):
    for mean in (True, False):  # the right answer either way: the whole batch's gradient
        q = Quadratic(mean=mean)
        told = {"mean_over_examples": lambda m=mean: m}
        kwargs = {**(told if case != "not told" else {}), **options}
        ascent = q.halves if batches is None else batches(q)
        center = CenterGradient(q.params, q.whole, **kwargs)
        assert q.step(center, ascent, batch_stats) == [9], case
        torch.testing.assert_close(q.phi.grad, q.center_grad(), rtol=1e-15, atol=1e-15)


def test_a_batch_without_tensor_arguments_takes_the_whole_batch_pass():
    q, seen = Quadratic(), []
    whole = ((), {"n": 9})

    def evaluate(batch, label):
        seen.append(label)
        (q.phi**2).sum().backward()
        return 0.0

    center = CenterGradient(q.params, whole, mean_over_examples=lambda: True)
    evaluate(whole, "first")
    center.after_first_ascent([((), {"n": 4}), ((), {"n": 5})])
    center.finish(evaluate)
    assert seen[-1] == "full-batch gradient at the unperturbed parameters"


def test_without_fixed_parameters_the_hooks_do_nothing():
    q = Quadratic()
    center = CenterGradient(ParamGroups([q.theta]), q.whole, mean_over_examples=lambda: True)
    q.evaluate(q.halves[0], "first ascent pass")
    center.after_first_ascent(q.halves)
    center.after_descent()
    center.finish(q.evaluate)
    assert len(q.passes) == 1 and q.theta.grad is not None


def test_after_descent_drops_the_fixed_gradient_at_the_perturbed_point():
    q = Quadratic()
    center = CenterGradient(q.params, q.whole, savings=StepSavings(frozen_constants=False))
    with center.frozen():
        q.evaluate(q.whole, "descent pass")
    assert q.phi.grad.any()
    center.after_descent()
    assert not q.phi.grad.any() and q.theta.grad.any()


# -- the fixed parameters as constants ----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "unless", "frozen"),
    [
        ({}, False, True),
        ({}, True, False),  # the pass whose gradient is kept
        ({"savings": StepSavings(frozen_constants=False)}, False, False),
        ({"rank_local": True}, False, False),  # DDP expects every parameter's gradient
    ],
)
def test_frozen_turns_requires_grad_off_for_the_pass(options, unless, frozen):
    q = Quadratic()
    center = CenterGradient(q.params, q.whole, **options)
    with center.frozen(unless=unless):
        assert q.phi.requires_grad is not frozen and q.theta.requires_grad
        q.evaluate(q.whole, "a pass")
    assert q.phi.requires_grad
    assert (q.phi.grad is None) is frozen
    assert q.theta.grad is not None


def test_frozen_constants_restores_requires_grad_after_an_error_and_leaves_constants_alone():
    grads, constant = torch.ones(2, requires_grad=True), torch.ones(2)
    with pytest.raises(RuntimeError, match="boom"), frozen_constants([grads, constant]):
        assert not grads.requires_grad
        raise RuntimeError("boom")
    assert grads.requires_grad and not constant.requires_grad


def test_frozen_constants_leaves_the_other_gradients_unchanged():
    q, expected = Quadratic(), Quadratic()
    with frozen_constants([q.phi]):
        q.evaluate(q.whole, "frozen")
    expected.evaluate(expected.whole, "plain")
    assert q.phi.grad is None
    assert torch.equal(q.theta.grad, expected.theta.grad)


# -- through OT-MDR: the scales' gradient from the halves ---------------------------------------


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
