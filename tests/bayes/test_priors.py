"""The fused isotropic prior equals ``Normal(0, s).expand(shape).to_event(n)`` where it counts."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch.distributions import kl_divergence

from pyro_otmdr import OTMDR, SAM, AutoDeltaEnsemble, EnsembleELBO
from pyro_otmdr.bayes import bnn, priors
from pyro_otmdr.bayes.bnn import bayesian
from pyro_otmdr.bayes.priors import IsotropicNormal
from pyro_otmdr.workflow.models import build_model

DTYPES = [torch.float32, torch.float64]
SHAPES = [(), (5,), (4, 3), (2, 3, 4)]


def _pair(shape, dtype, scale=0.3, batch=()):
    s = torch.tensor(scale, dtype=dtype)
    new = IsotropicNormal(s, shape).expand(batch)
    old = dist.Normal(torch.zeros((), dtype=dtype), s).expand(batch + shape).to_event(len(shape))
    return new, old


def _close(a, b, dtype):
    # eps-derived: the fused formula sums up to ~100 terms (the one-step ELBO) in another order
    # than the expanded Normal: the dtype's eps times ~64
    tol = 64 * torch.finfo(dtype).eps
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [(), (3,)])
def test_log_prob_and_gradient_equal_the_expanded_normal(shape, dtype, batch):
    new, old = _pair(shape, dtype, batch=batch)
    x = (2 * torch.randn((2, *batch, *shape), dtype=dtype)).requires_grad_()  # a sample dim too
    lp_new, lp_old = new.log_prob(x), old.log_prob(x)
    assert lp_new.shape == lp_old.shape == (2, *batch)
    _close(lp_new, lp_old, dtype)
    (g_new,) = torch.autograd.grad(lp_new.sum(), x)
    (g_old,) = torch.autograd.grad(lp_old.sum(), x)
    _close(g_new, g_old, dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_support_and_draws_are_the_expanded_normals(shape):
    new, old = _pair(shape, torch.float32, batch=(2,))
    assert (new.batch_shape, new.event_shape) == (old.batch_shape, old.event_shape)
    assert str(new.support) == str(old.support) and new.has_rsample
    for draw in ("sample", "rsample"):
        pyro.set_rng_seed(1)
        a = getattr(new, draw)((3,))
        pyro.set_rng_seed(1)
        b = getattr(old, draw)((3,))
        assert torch.equal(a, b), draw


def test_log_prob_of_a_scale_with_grad_stays_differentiable_at_every_call():
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)  # float64: by hand
    prior = IsotropicNormal(scale, (4,))
    x = torch.randn(4, dtype=torch.float64)
    for _ in range(2):  # coefficients are not kept across graphs
        (grad,) = torch.autograd.grad(prior.log_prob(x), scale)
        expected = (x.square().sum() / 0.7**3 - 4 / 0.7).reshape(())
        torch.testing.assert_close(grad, expected)


def test_validation_refuses_a_nan_or_a_wrong_shape():
    prior = IsotropicNormal(torch.tensor(1.0), (3,), validate_args=True)
    with pytest.raises(ValueError):
        prior.log_prob(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError):
        prior.log_prob(torch.zeros(4))
    with pytest.raises(ValueError, match="0-d"):
        IsotropicNormal(torch.ones(3), (3,))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kl_from_a_normal_guide_is_torchs_analytic_kl(shape, dtype):
    new, old = _pair(shape, dtype)
    loc = torch.randn(shape, dtype=dtype)
    guide_scale = torch.rand(shape, dtype=dtype) + 0.1
    guide = dist.Normal(loc, guide_scale).to_event(len(shape))
    _close(kl_divergence(guide, new), kl_divergence(guide, old), dtype)
    point = dist.Delta(loc, event_dim=len(shape))  # Pyro's (Delta, Distribution) rule
    _close(kl_divergence(point, new), kl_divergence(point, old), dtype)


def test_kl_from_a_normal_subclass_takes_the_fused_formula(monkeypatch):
    """A ``Normal`` subclass (OT-MDR's fixed-noise guide site is one) is a ``Normal`` to Torch's
    KL rules; the fused formula serves it too, with the same value."""

    class FixedNormal(dist.Normal):
        pass

    new, old = _pair((4, 3), torch.float64)
    loc, scale = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64)
    guide = FixedNormal(loc, scale + 0.1).to_event(2)
    fused = []
    original = priors._kl_normal_isotropic
    monkeypatch.setattr(
        priors, "_kl_normal_isotropic", lambda p, q: fused.append(p) or original(p, q)
    )
    _close(kl_divergence(guide, new), kl_divergence(guide, old), torch.float64)
    assert len(fused) == 1 and type(fused[0]) is FixedNormal


def test_kl_falls_back_to_the_expanded_normal_for_other_guides():
    new, old = _pair((4, 3), torch.float64)
    partial = dist.Normal(torch.zeros(4, 3), torch.ones(4, 3)).to_event(1)  # event dims differ
    for prior in (new, old):
        with pytest.raises(NotImplementedError):
            kl_divergence(partial, prior)
    laplace = dist.Laplace(torch.randn(4, 3, dtype=torch.float64), 1.0).to_event(2)
    _close(kl_divergence(laplace, new), kl_divergence(laplace, old), torch.float64)


# ------------------------------------------------------------- inside bayesian()


def _old_prior(self, module):
    """The prior :func:`bayesian` built before :class:`IsotropicNormal`."""
    scale = self.root.prior_scale
    loc = torch.zeros((), dtype=scale.dtype, device=scale.device)
    return dist.Normal(loc, scale).expand(self.shape).to_event(len(self.shape))


GUIDES = {
    "normal": AutoNormal,  # default init_to_feasible: a prior draw mapped to the support
    "delta": AutoDelta,  # default init_to_median: the median of prior draws
    "ensemble": lambda model: AutoDeltaEnsemble(model, num_members=2),  # init_to_sample
}
ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,  # AutoNormal: the analytic KL
    "sam": lambda: SAM(Trace_ELBO(), rho=0.1),
    "otmdr": lambda: OTMDR(Trace_ELBO(), rho=0.1, seed=3),
}


def _one_step(guide_name, elbo_name, dtype):
    """The loss and the gradient of every parameter after one step's ``loss_and_grads``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = build_model("mlp", 10, in_features=6, hidden=(5,))
    model = bayesian(net, num_data=40, prior_scale=0.3).to(dtype)
    x, y = torch.randn(8, 6, dtype=dtype), torch.randint(0, 10, (8,))
    guide = GUIDES[guide_name](model)
    guide(x, y)
    elbo = ELBOS[elbo_name]()
    if guide_name == "ensemble" and elbo_name in ("trace", "meanfield"):
        elbo = EnsembleELBO(elbo)
    loss = elbo.loss_and_grads(model, guide, x, y)
    params = pyro.get_param_store().named_parameters()
    return torch.as_tensor(loss, dtype=dtype), {name: p.grad.clone() for name, p in params}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("elbo_name", list(ELBOS))
@pytest.mark.parametrize("guide_name", list(GUIDES))
def test_one_step_loss_and_gradients_equal_the_old_priors(
    guide_name, elbo_name, dtype, monkeypatch
):
    loss_new, grads_new = _one_step(guide_name, elbo_name, dtype)
    monkeypatch.setattr(bnn._NormalPrior, "__call__", _old_prior)
    loss_old, grads_old = _one_step(guide_name, elbo_name, dtype)
    _close(loss_new, loss_old, dtype)
    assert grads_new.keys() == grads_old.keys() and grads_new
    for name, grad in grads_new.items():
        _close(grad, grads_old[name], dtype)


def test_the_model_keeps_one_prior_until_its_scale_moves_or_changes():
    model = bayesian(build_model("mlp", 10, in_features=6, hidden=(5,)), num_data=40)
    prior_of = model.net._modules["0"]._pyro_samples["weight"]
    module = model.net._modules["0"]
    first = prior_of(module)
    assert prior_of(module) is first  # kept from pass to pass
    model.double()
    second = prior_of(module)
    assert second is not first and second.scale.dtype == torch.float64
    with torch.no_grad():
        model.prior_scale.fill_(2.0)  # written in place: a new version
    third = prior_of(module)
    assert third is not second and third.scale.item() == 2.0
    with pyro.validation_enabled(not third._validate_args):
        assert prior_of(module)._validate_args != third._validate_args
    assert prior_of(module) is third  # each validation setting keeps its own
    clone = copy.deepcopy(model)  # the copy follows its own buffer
    clone_prior = clone.net._modules["0"]._pyro_samples["weight"](clone.net._modules["0"])
    assert clone_prior.scale is clone.prior_scale
