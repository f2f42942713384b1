"""The geometries of the ascent move, on analytic targets: each tensor's move has the stated
size and direction (float64, so default tolerances are float64 rounding), through the bare
engine, the Pyro loss and the torch optimiser; and the errors for what cannot work."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr import OTMDR, SAM, AutoDeltaEnsemble, OTMDROptimizer, SAMOptimizer
from pyro_otmdr.bayes import bayesian
from pyro_otmdr.model_space.geometry import GEOMETRIES, Geometry, scale_partner
from pyro_otmdr.model_space.step import ParamGroups, SharpnessAwareStep
from tests.model_space.test_elbo import data, theta_init
from tests.model_space.test_optim import elbo_module, module_params, svi_params

pytestmark = pytest.mark.usefixtures("float64")


def _sam_move(geometry, params, target, scales=None):
    """SAM on ``L = sum_l |w_l - c_l|^2 / 2``: the descent gradient is ``w + e - c``, so it
    gives the move ``e`` itself."""

    def evaluate(batch, label):
        loss = sum(0.5 * (w - c).pow(2).sum() for w, c in zip(params, target, strict=True))
        loss.backward()
        return loss

    start = [w.detach().clone() for w in params]
    groups = ParamGroups(list(params), scales=scales)
    step = SharpnessAwareStep.sam(0.1, geometry=geometry)
    step.run(evaluate, ((torch.zeros(4, 1),), {}), lambda b: [b], groups)
    moves = [w.grad - (s - c) for w, s, c in zip(params, start, target, strict=True)]
    grads = [s - c for s, c in zip(start, target, strict=True)]
    return moves, grads, start


def _problem():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 2, generator=gen).requires_grad_(), torch.randn(4, generator=gen)]
    params[1].requires_grad_()
    target = [torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen)]
    return params, target


def test_global_spends_rho_on_one_ball_along_the_whole_gradient():
    params, target = _problem()
    moves, grads, _ = _sam_move("global", params, target)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    for e, g in zip(moves, grads, strict=True):
        torch.testing.assert_close(e, 0.1 * g / norm)


def test_layer_moves_each_tensor_by_rho_times_its_own_norm_along_its_own_gradient():
    params, target = _problem()
    moves, grads, start = _sam_move("layer", params, target)
    for e, g, w in zip(moves, grads, start, strict=True):
        torch.testing.assert_close(e.norm(), 0.1 * w.norm())
        torch.testing.assert_close(e, 0.1 * w.norm() * g / g.norm())


def test_elementwise_is_asams_formula():
    params, target = _problem()
    moves, grads, start = _sam_move("elementwise", params, target)
    metric = [w.abs() + 0.01 for w in start]
    norm = torch.sqrt(sum((t * g).pow(2).sum() for t, g in zip(metric, grads, strict=True)))
    for e, g, t in zip(moves, grads, metric, strict=True):
        torch.testing.assert_close(e, 0.1 * t**2 * g / norm)
    ball = torch.sqrt(sum((e / t).pow(2).sum() for e, t in zip(moves, metric, strict=True)))
    torch.testing.assert_close(ball, torch.tensor(0.1))  # on the sphere ||T^-1 e|| = rho


def test_posterior_moves_in_units_of_the_scales():
    params, target = _problem()
    scales = [torch.full((3, 2), 0.5), torch.linspace(0.1, 2.0, 4)]
    moves, grads, _ = _sam_move("posterior", params, target, scales)
    norm = torch.sqrt(sum((s * g).pow(2).sum() for s, g in zip(scales, grads, strict=True)))
    for e, g, s in zip(moves, grads, scales, strict=True):
        torch.testing.assert_close(e, 0.1 * s**2 * g / norm)
    ball = torch.sqrt(sum((e / s).pow(2).sum() for e, s in zip(moves, scales, strict=True)))
    torch.testing.assert_close(ball, torch.tensor(0.1))


def test_scale_partners_of_pyros_gaussian_guides():
    names = ["AutoNormal.locs.fc.weight", "AutoNormal.scales.fc.weight"]
    assert scale_partner(names[0], names) == names[1]
    torch_names = ["guide.loc", "guide.scale_unconstrained"]
    assert scale_partner("guide.loc", torch_names) == "guide.scale_unconstrained"
    local = ["guide.locs.w_unconstrained", "guide.scales.w_unconstrained"]
    assert scale_partner(local[0], local) == local[1]


class _Recording(Geometry):
    """The posterior geometry, keeping the scales each move was given."""

    def move_(self, params, grads, radius, direction=None, scales=None):
        object.__setattr__(self, "seen", [s.clone() for s in scales])
        return super().move_(params, grads, radius, direction, scales)


def _digits_like(n=16):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 4, generator=gen), torch.randint(3, (n,), generator=gen)


def test_the_pyro_loss_gives_each_mean_its_guides_scale_and_the_scales_their_centre_gradient():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = AutoNormal(model, init_scale=0.05)
    x, y = _digits_like()
    guide(x, y)
    grads = {}
    for geometry in ("global", "posterior"):
        loss = SAM(Trace_ELBO(), rho=0.01, geometry=geometry)
        if geometry == "posterior":
            loss.engine.geometry = _Recording("posterior")
        pyro.set_rng_seed(1)
        loss.loss_and_grads(model, guide, x, y)
        store = pyro.get_param_store()
        grads[geometry] = {n: store.get_param(n).unconstrained().grad.clone() for n in store}
        for name in store:
            store.get_param(name).unconstrained().grad = None
    store = pyro.get_param_store()
    scales = [store[n].detach() for n in store if ".scales." in n]
    seen = loss.engine.geometry.seen
    assert len(seen) == len(scales)
    for s, expected in zip(seen, scales, strict=True):
        torch.testing.assert_close(s, expected)
    for name in store:
        if ".scales." in name:  # the gradient at the unperturbed sample, whatever the geometry
            torch.testing.assert_close(grads["posterior"][name], grads["global"][name])
        else:
            assert not torch.allclose(grads["posterior"][name], grads["global"][name])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_torch_route_equals_the_svi_route(geometry):
    """The analytic model of tests/model_space/test_elbo.py under AutoNormal, two steps."""
    y, theta0 = data("cpu"), theta_init("cpu")
    options = dict(rho=0.3, n_particles=2, noise_std=0.01, seed=3, geometry=geometry)
    expected = svi_params(AutoNormal, OTMDR(Trace_ELBO(), **options), y, theta0, 2, init_scale=0.3)
    with pyro.settings.context(module_local_params=True):
        loss_fn = elbo_module(AutoNormal, y, theta0, init_scale=0.3)
        opt = OTMDROptimizer(loss_fn, torch.optim.SGD(loss_fn.parameters(), lr=0.01), **options)
        opt.step(loss_fn, y)
        opt.step(loss_fn, y)
        got = module_params(loss_fn)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-12)


@pytest.mark.parametrize("guide_kind", ["delta", "normal", "ensemble"])
@pytest.mark.parametrize("geometry", ["layer", "elementwise"])
def test_every_guide_family_trains_under_the_parameter_geometries(guide_kind, geometry):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = {
        "delta": lambda: AutoDelta(model),
        "normal": lambda: AutoNormal(model),
        "ensemble": lambda: AutoDeltaEnsemble(model, num_members=2),
    }[guide_kind]()
    x, y = _digits_like()
    svi = SVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.05}),
        loss=OTMDR(Trace_ELBO(), rho=0.05, geometry=geometry),
    )
    losses = [svi.step(x, y) for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_an_unknown_geometry_names_the_known_ones():
    with pytest.raises(ValueError, match="global, layer, elementwise, posterior"):
        OTMDR(Trace_ELBO(), rho=0.05, geometry="fisher")
    with pytest.raises(ValueError, match="eta must be"):
        Geometry("elementwise", eta=0.0)


def test_the_posterior_geometry_refuses_a_point_mass_and_leaves_it_as_it_was():
    pyro.clear_param_store()
    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = AutoDelta(model)
    x, y = _digits_like()
    guide(x, y)
    before = {n: v.detach().clone() for n, v in pyro.get_param_store().items()}
    loss = OTMDR(Trace_ELBO(), rho=0.05, geometry="posterior")
    with pytest.raises(ValueError, match=r"has no scale .*point estimate"):
        loss.loss_and_grads(model, guide, x, y)
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), before[name])


def test_the_torch_route_needs_the_module_for_the_posterior_geometry():
    net = torch.nn.Linear(4, 3)
    base = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="needs the module itself"):
        SAMOptimizer(net.named_parameters(), base, rho=0.05, geometry="posterior")
    with pytest.raises(ValueError, match="has no scale"):
        SAMOptimizer(net, base, rho=0.05, geometry="posterior")
