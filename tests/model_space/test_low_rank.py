"""AutoLowRankMultivariateNormal under OT-MDR: its ``loc`` is perturbed, its spread (``scale``,
``cov_factor``) takes the gradient at the unperturbed sample, and the noise
``kappa = (kappa_W, kappa_D)`` of ``z = loc + W kappa_W + sqrt(D) kappa_D`` is fixed for the step.
Against the hand-derived gradients of ``test_elbo``'s analytic model.
"""

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal

from pyro_otmdr import OTMDR, SAM, perturbed_by_default
from tests.model_space.test_center_gradient import (
    assert_grads_close,
    store_grads,
    whole_batch_grads,
)
from tests.model_space.test_elbo import (
    data,
    halves_in_order,
    init_values,
    make_model,
    otmdr_gradient,
    sgd_svi,
    theta_init,
)

SITE = "_AutoLowRankMultivariateNormal_latent"
SPREAD = ["AutoLowRankMultivariateNormal.scale", "AutoLowRankMultivariateNormal.cov_factor"]


def low_rank(model, theta0):
    return AutoLowRankMultivariateNormal(
        model, init_loc_fn=init_values(theta0), init_scale=0.3, rank=2
    )


def offset(guide, kappa):
    """``W kappa_W + sqrt(D) kappa_D`` with Pyro's ``W = cov_factor * scale``, ``D = scale^2``."""
    with torch.no_grad():
        factor = guide.cov_factor * guide.scale.unsqueeze(-1)
        return factor @ kappa[:2] + guide.scale * kappa[2:]


def test_the_default_rule_perturbs_the_loc_and_not_the_spread():
    assert perturbed_by_default("AutoLowRankMultivariateNormal.loc")
    assert not any(perturbed_by_default(name) for name in SPREAD)


def test_low_rank_moves_its_loc_only_and_fixes_its_noise_for_the_step():
    pyro.clear_param_store()
    y, theta0 = data("cpu"), theta_init("cpu")
    model = make_model("cpu")
    guide = low_rank(model, theta0)
    loss = OTMDR(Trace_ELBO(), rho=0.3, n_particles=2, split_batch=halves_in_order)
    loss.loss_and_grads(model, guide, y)

    kappa = loss.last_step.reparam_noise[SITE]
    assert kappa.shape == (2 + 5,)  # rank + latent dimension
    expected_loc = otmdr_gradient(theta0, y, (y[:4], y[4:]), 0.3, 0.6, offset=offset(guide, kappa))
    torch.testing.assert_close(guide.loc.grad, expected_loc)  # both particles: the same halves
    torch.testing.assert_close(guide.loc.detach(), theta0)  # restored after the step


def test_low_rank_spread_takes_the_whole_batchs_gradient_at_the_centre():
    pyro.clear_param_store()
    y, model = data("cpu", n=9), make_model("cpu")
    guide = low_rank(model, theta_init("cpu"))
    loss = OTMDR(Trace_ELBO(), rho=0.3, n_particles=2, seed=1)  # the spread from the halves
    loss.loss_and_grads(model, guide, y)
    got = store_grads(SPREAD)
    expected = whole_batch_grads(
        Trace_ELBO(), model, guide, y, loss.last_step.reparam_noise, SPREAD
    )
    assert_grads_close(got, expected)


def test_low_rank_trains_under_otmdr_and_sam():
    for wrapped in (OTMDR(Trace_ELBO(), rho=0.05, seed=0), SAM(Trace_ELBO(), rho=0.05)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        y, model = data("cpu", n=16), make_model("cpu")
        svi = sgd_svi(model, AutoLowRankMultivariateNormal(model, rank=2), wrapped, lr=1e-3)
        losses = [svi.step(y) for _ in range(30)]
        assert losses[-1] < 0.8 * losses[0]
