"""The OT-MDR and SAM steps against hand-derived values on an analytic target.

The model is ``theta ~ N(0, I)`` (two sites, ``a`` in R^2 and ``b`` in R^3) and
``y_i ~ N(theta, I)`` inside ``pyro.plate("data", size=N, subsample_size=len(y))``. For a point
estimate its loss on a batch ``b`` is ``|theta|^2 / 2 + N / |b| * sum_i |y_i - theta|^2 / 2``, so

    grad L_b(theta) = theta + N * (theta - mean_b(y)).

For AutoNormal with fixed noise ``kappa`` the sample is ``z = mu + s * kappa`` and the loss adds
``log q(z) = -|kappa|^2 / 2 - sum log s``: the mean's gradient is ``grad L_b(z)`` and the
unconstrained scale ``u`` (``s = softplus(u)``) gets ``(grad L_b(z) * kappa - 1 / s) * sigmoid(u)``.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value

from pyro_otmdr import OTMDR, SAM
from tests.conftest import DEVICES

N = 50
DTYPE = torch.float64


def make_model(device):
    def model(y):
        a = pyro.sample(
            "a", dist.Normal(torch.zeros(2, dtype=DTYPE, device=device), 1.0).to_event(1)
        )
        b = pyro.sample(
            "b", dist.Normal(torch.zeros(3, dtype=DTYPE, device=device), 1.0).to_event(1)
        )
        theta = torch.cat([a, b], -1)
        with pyro.plate("data", size=N, subsample_size=len(y)):
            pyro.sample("obs", dist.Normal(theta, 1.0).to_event(1), obs=y)

    return model


def data(device, n=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen, dtype=DTYPE).to(device) + 1.0


def theta_init(device):
    gen = torch.Generator().manual_seed(2)
    return torch.randn(5, generator=gen, dtype=DTYPE).to(device)


def init_values(theta):
    return init_to_value(values={"a": theta[:2].clone(), "b": theta[2:].clone()})


def halves_in_order(args, kwargs, generator):
    (y,) = args
    n = len(y) // 2
    return ((y[:n],), {}), ((y[n:],), {})


# -- hand-derived reference ------------------------------------------------------------------


def grad(theta, y):
    return theta + N * (theta - y.mean(0))


def ascend(theta, g, radius):
    return theta + radius * g / g.norm()


def otmdr_gradient(theta, y, halves, rho, rho2, offset=0.0):
    """G = grad L_B(theta2) for one particle; ``offset`` = s * kappa for a Gaussian guide."""
    y1, y2 = halves
    t1 = ascend(theta, grad(theta + offset, y1), rho)
    t2 = ascend(t1, grad(t1 + offset, y2), rho2)
    return grad(t2 + offset, y)


def params_vector(names):
    store = pyro.get_param_store()
    return torch.cat([store[name].detach().reshape(-1) for name in names])


def sgd_svi(model, guide, loss, lr=0.01):
    return SVI(model, guide, pyro.optim.SGD({"lr": lr}), loss=loss)


# -- Dirac (AutoDelta) -------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_dirac_step_matches_hand_derivation(device):
    y, theta0 = data(device), theta_init(device)
    model = make_model(device)
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(Trace_ELBO(), rho=0.3, noise_std=0.0, split_batch=halves_in_order)
    sgd_svi(model, guide, loss, lr=0.01).step(y)

    expected_grad = otmdr_gradient(theta0, y, (y[:4], y[4:]), rho=0.3, rho2=0.6)
    new = params_vector(["AutoDelta.a", "AutoDelta.b"])
    torch.testing.assert_close(new, theta0 - 0.01 * expected_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_two_particles_with_random_splits_are_averaged(device):
    y, theta0 = data(device, n=10), theta_init(device)
    model = make_model(device)
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(Trace_ELBO(), rho=0.2, n_particles=2, noise_std=0.0, seed=7)
    sgd_svi(model, guide, loss, lr=0.01).step(y)

    gen = torch.Generator().manual_seed(7)  # the same permutations, particle by particle
    grads = []
    for _ in range(2):
        perm = torch.randperm(10, generator=gen).to(device)
        grads.append(otmdr_gradient(theta0, y, (y[perm[:5]], y[perm[5:]]), 0.2, 0.4))
    expected = theta0 - 0.01 * (grads[0] + grads[1]) / 2
    torch.testing.assert_close(params_vector(["AutoDelta.a", "AutoDelta.b"]), expected)


def test_particles_are_averaged_not_summed():
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(Trace_ELBO(), rho=0.3, n_particles=3, split_batch=halves_in_order)
    sgd_svi(model, guide, loss, lr=0.01).step(y)
    single = otmdr_gradient(theta0, y, (y[:4], y[4:]), 0.3, 0.6)  # identical particles
    torch.testing.assert_close(
        params_vector(["AutoDelta.a", "AutoDelta.b"]), theta0 - 0.01 * single
    )


def test_noise_is_added_after_each_ascent_move():
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(Trace_ELBO(), rho=0.3, noise_std=0.05, split_batch=halves_in_order, seed=11)
    sgd_svi(model, guide, loss, lr=0.01).step(y)

    gen = torch.Generator().manual_seed(11)  # one flat draw per move, params in guide order
    t1 = ascend(theta0, grad(theta0, y[:4]), 0.3) + 0.05 * torch.randn(
        5, generator=gen, dtype=DTYPE
    )
    t2 = ascend(t1, grad(t1, y[4:]), 0.6) + 0.05 * torch.randn(5, generator=gen, dtype=DTYPE)
    expected = theta0 - 0.01 * grad(t2, y)
    torch.testing.assert_close(params_vector(["AutoDelta.a", "AutoDelta.b"]), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_sam_matches_hand_derivation(device):
    y, theta0 = data(device), theta_init(device)
    model = make_model(device)
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    sgd_svi(model, guide, SAM(Trace_ELBO(), rho=0.3), lr=0.01).step(y)
    expected_grad = grad(ascend(theta0, grad(theta0, y), 0.3), y)
    new = params_vector(["AutoDelta.a", "AutoDelta.b"])
    torch.testing.assert_close(new, theta0 - 0.01 * expected_grad)


def test_rho2_defaults_to_twice_rho_and_can_be_set():
    assert OTMDR(Trace_ELBO(), rho=0.05).rho2 == pytest.approx(0.1)
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(Trace_ELBO(), rho=0.3, rho2=0.05, split_batch=halves_in_order)
    sgd_svi(model, guide, loss, lr=0.01).step(y)
    expected = theta0 - 0.01 * otmdr_gradient(theta0, y, (y[:4], y[4:]), 0.3, 0.05)
    torch.testing.assert_close(params_vector(["AutoDelta.a", "AutoDelta.b"]), expected)


def test_half_batches_are_scaled_by_the_plate():
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(Trace_ELBO(), rho=0.3, split_batch=halves_in_order)
    sgd_svi(model, guide, loss).step(y)
    # scale N / |B1| on the first half: grad = theta + N (theta - mean(y1))
    g1 = theta0 + N * (theta0 - y[:4].mean(0))
    assert loss.last_step.ascent_norms[0].item() == pytest.approx(g1.norm().item())
    unscaled = theta0 + (N / 8) * (4 * theta0 - y[:4].sum(0))
    assert loss.last_step.ascent_norms[0].item() != pytest.approx(unscaled.norm().item())


def test_perturb_rule_can_be_overridden():
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(
        Trace_ELBO(), rho=0.3, split_batch=halves_in_order, perturb=lambda n: n.endswith(".a")
    )
    sgd_svi(model, guide, loss, lr=0.01).step(y)
    # `a` moves on its own (norm over `a` only); `b` takes the gradient at the unperturbed point
    a0, ya = theta0[:2], y[:, :2]
    a1 = ascend(a0, grad(a0, ya[:4]), 0.3)
    a2 = ascend(a1, grad(a1, ya[4:]), 0.6)
    expected = torch.cat([a0 - 0.01 * grad(a2, ya), theta0[2:] - 0.01 * grad(theta0[2:], y[:, 2:])])
    torch.testing.assert_close(params_vector(["AutoDelta.a", "AutoDelta.b"]), expected)


# -- diagonal Gaussian (AutoNormal) -------------------------------------------------------------


def autonormal(model, theta0):
    return AutoNormal(model, init_loc_fn=init_values(theta0), init_scale=0.3)


def autonormal_state(loss):
    """``kappa``, unconstrained scale ``u``, ``s = softplus(u)``, and the gradients of mu and u."""
    store = pyro.get_param_store()
    kappa = torch.cat([loss.last_step.reparam_noise[f"{s}_unconstrained"] for s in "ab"])
    u = torch.cat([store[f"AutoNormal.scales.{s}"].unconstrained().detach() for s in "ab"])
    mu_grad = torch.cat([store[f"AutoNormal.locs.{s}"].unconstrained().grad for s in "ab"])
    u_grad = torch.cat([store[f"AutoNormal.scales.{s}"].unconstrained().grad for s in "ab"])
    return kappa, u, torch.nn.functional.softplus(u), mu_grad, u_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_particles", [1, 2])
def test_autonormal_moves_means_only_and_scales_see_the_unperturbed_sample(device, n_particles):
    y, theta0 = data(device), theta_init(device)
    model = make_model(device)
    guide = autonormal(model, theta0)
    loss = OTMDR(Trace_ELBO(), rho=0.3, n_particles=n_particles, split_batch=halves_in_order)
    loss.loss_and_grads(model, guide, y)  # leaves the descent gradient in .grad

    kappa, u, scale, mu_grad, u_grad = autonormal_state(loss)
    offset = scale * kappa
    expected_mu = otmdr_gradient(theta0, y, (y[:4], y[4:]), 0.3, 0.6, offset=offset)
    expected_u = (grad(theta0 + offset, y) * kappa - 1 / scale) * torch.sigmoid(u)
    torch.testing.assert_close(mu_grad, expected_mu)
    torch.testing.assert_close(u_grad, expected_u)
    torch.testing.assert_close(params_vector(["AutoNormal.locs.a", "AutoNormal.locs.b"]), theta0)


def test_reparam_noise_is_fixed_across_passes_and_particles_and_redrawn_per_step():
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = autonormal(model, theta0)
    seen = []

    def spy_guide(y):
        out = guide(y)
        seen.append(((out["a"] - guide.locs.a) / guide.scales.a).detach().clone())
        return out

    svi = sgd_svi(model, spy_guide, OTMDR(Trace_ELBO(), rho=0.3, n_particles=2))
    svi.step(y)
    first_step = seen[:]
    assert len(first_step) == 2 * 3 + 1  # two particles of three passes, one unperturbed pass
    for kappa in first_step[1:]:
        torch.testing.assert_close(kappa, first_step[0])
    svi.step(y)
    assert not torch.allclose(seen[-1], first_step[0])


def test_trace_mean_field_elbo_with_autonormal_trains():
    y = data("cpu", n=16)
    model = make_model("cpu")
    guide = AutoNormal(model)
    svi = SVI(
        model, guide, pyro.optim.Adam({"lr": 0.05}), loss=OTMDR(TraceMeanField_ELBO(), rho=0.05)
    )
    losses = [svi.step(y) for _ in range(50)]
    assert losses[-1] < losses[0]


def test_sam_with_autonormal_reuses_its_unperturbed_pass_for_the_scales():
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = autonormal(model, theta0)
    passes = []

    def counting_guide(y):
        passes.append(len(y))
        return guide(y)

    loss = SAM(Trace_ELBO(), rho=0.3)
    loss.loss_and_grads(model, counting_guide, y)
    assert passes == [8, 8]  # ascent and gradient; the scales need no third pass

    kappa, u, scale, mu_grad, u_grad = autonormal_state(loss)
    z0 = theta0 + scale * kappa
    expected_mu = grad(ascend(theta0, grad(z0, y), 0.3) + scale * kappa, y)
    expected_u = (grad(z0, y) * kappa - 1 / scale) * torch.sigmoid(u)
    torch.testing.assert_close(mu_grad, expected_mu)
    torch.testing.assert_close(u_grad, expected_u)


def test_merge_grads_reproduces_the_reference_codes_second_move():
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = AutoDelta(model, init_loc_fn=init_values(theta0))
    loss = OTMDR(Trace_ELBO(), rho=0.3, split_batch=halves_in_order, merge_grads=True)
    sgd_svi(model, guide, loss, lr=0.01).step(y)
    g1 = grad(theta0, y[:4])
    t1 = ascend(theta0, g1, 0.3)
    g2 = grad(t1, y[4:])
    t2 = t1 + 0.6 * (g1 + g2) / g2.norm()  # along g1 + g2, scaled by 1 / ||g2||
    expected = theta0 - 0.01 * grad(t2, y)
    torch.testing.assert_close(params_vector(["AutoDelta.a", "AutoDelta.b"]), expected)
