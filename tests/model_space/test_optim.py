"""The torch-optimiser route: the same step as the SVI route, on the analytic target of
tests/test_otmdr.py, through Pyro's ELBOModule and through a plain torch closure."""

import copy

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr import OTMDR, SAM, NonFiniteLossError
from pyro_otmdr.model_space.optim import OTMDROptimizer, SAMOptimizer
from tests.model_space.test_elbo import (
    ascend,
    data,
    grad,
    halves_in_order,
    init_values,
    make_model,
    otmdr_gradient,
    theta_init,
)


@pytest.fixture
def local_params():
    with pyro.settings.context(module_local_params=True):
        yield


def svi_params(guide_cls, loss, y, theta0, steps=1, **guide_kwargs):
    """Parameters after ``steps`` SVI steps with plain SGD (global param store)."""
    model = make_model("cpu")
    guide = guide_cls(model, init_loc_fn=init_values(theta0), **guide_kwargs)
    guide(y)  # builds the guide's parameters
    pyro.set_rng_seed(5)  # the same noise as the ELBOModule run
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.01}), loss=loss)
    for _ in range(steps):
        svi.step(y)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def elbo_module(guide_cls, y, theta0, **guide_kwargs):
    model = make_model("cpu")
    guide = guide_cls(model, init_loc_fn=init_values(theta0), **guide_kwargs)
    loss_fn = Trace_ELBO()(model, guide)
    loss_fn(y)  # builds the guide's parameters
    pyro.set_rng_seed(5)  # the same noise as the SVI run
    return loss_fn


def module_params(loss_fn):
    """The ELBOModule's guide parameters, constrained, under param-store names."""
    guide = loss_fn.guide
    prefix = type(guide).__name__
    out = {}
    for name, _ in guide.named_parameters():
        short = name.removesuffix("_unconstrained")
        out[f"{prefix}.{short}"] = getattr_deep(guide, short).detach().clone()
    return out


def getattr_deep(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# -- the same step as the SVI route ------------------------------------------------------------


@pytest.mark.parametrize("n_particles", [1, 2])
def test_elbo_module_autodelta_matches_svi_and_hand_derivation(local_params, n_particles):
    y, theta0 = data("cpu"), theta_init("cpu")
    with pyro.settings.context(module_local_params=False):
        loss = OTMDR(Trace_ELBO(), rho=0.3, n_particles=n_particles, seed=3)
        expected = svi_params(AutoDelta, loss, y, theta0)

    loss_fn = elbo_module(AutoDelta, y, theta0)
    base = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
    opt = OTMDROptimizer(loss_fn.named_parameters(), base, rho=0.3, n_particles=n_particles, seed=3)
    opt.step(loss_fn, y)
    got = module_params(loss_fn)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-12)


def test_elbo_module_deterministic_split_matches_hand_derivation(local_params):
    y, theta0 = data("cpu"), theta_init("cpu")
    loss_fn = elbo_module(AutoDelta, y, theta0)
    base = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
    opt = OTMDROptimizer(loss_fn, base, rho=0.3, split_batch=halves_in_order)
    opt.step(loss_fn, y)
    expected = theta0 - 0.01 * otmdr_gradient(theta0, y, (y[:4], y[4:]), 0.3, 0.6)
    got = torch.cat([loss_fn.guide.a.detach(), loss_fn.guide.b.detach()])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("n_particles", [1, 2])
def test_elbo_module_autonormal_matches_svi_means_and_scales(local_params, n_particles):
    y, theta0 = data("cpu"), theta_init("cpu")
    with pyro.settings.context(module_local_params=False):
        loss = OTMDR(Trace_ELBO(), rho=0.3, n_particles=n_particles, noise_std=0.01, seed=3)
        expected = svi_params(AutoNormal, loss, y, theta0, steps=2, init_scale=0.3)

    loss_fn = elbo_module(AutoNormal, y, theta0, init_scale=0.3)
    names = [n for n, _ in loss_fn.named_parameters()]
    assert "guide.scales.a_unconstrained" in names  # the default rule leaves these alone
    base = torch.optim.SGD(loss_fn.parameters(), lr=0.01)
    opt = OTMDROptimizer(
        loss_fn.named_parameters(), base, rho=0.3, n_particles=n_particles, noise_std=0.01, seed=3
    )
    opt.step(loss_fn, y)
    opt.step(loss_fn, y)
    got = module_params(loss_fn)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-12)


def test_plain_module_closure_matches_hand_derivation():
    y, theta0 = data("cpu"), theta_init("cpu")
    theta = torch.nn.Parameter(theta0.clone())
    n = 50

    def closure(rows):  # the point-estimate loss of the Pyro model, written out
        return 0.5 * theta.pow(2).sum() + n / len(rows) * 0.5 * (rows - theta).pow(2).sum()

    opt = OTMDROptimizer(
        [theta], torch.optim.SGD([theta], lr=0.01), rho=0.3, split_batch=halves_in_order
    )
    loss = opt.step(closure, y)
    expected = theta0 - 0.01 * otmdr_gradient(theta0, y, (y[:4], y[4:]), 0.3, 0.6)
    torch.testing.assert_close(theta.detach(), expected)
    assert theta.grad is None  # zeroed after the base step
    assert loss == pytest.approx(opt.last_step.losses[0])

    theta.data.copy_(theta0)
    sam = SAMOptimizer([theta], torch.optim.SGD([theta], lr=0.01), rho=0.3)
    sam.step(closure, y)
    expected = theta0 - 0.01 * grad(ascend(theta0, grad(theta0, y), 0.3), y)
    torch.testing.assert_close(theta.detach(), expected)


def test_sam_optimizer_matches_sam_loss(local_params):
    y, theta0 = data("cpu"), theta_init("cpu")
    with pyro.settings.context(module_local_params=False):
        expected = svi_params(AutoDelta, SAM(Trace_ELBO(), rho=0.3), y, theta0)
    loss_fn = elbo_module(AutoDelta, y, theta0)
    opt = SAMOptimizer(loss_fn, torch.optim.SGD(loss_fn.parameters(), lr=0.01), rho=0.3)
    opt.step(loss_fn, y)
    got = module_params(loss_fn)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-12)


# -- optimiser plumbing ----------------------------------------------------------------------


def linear_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen)
    y = x @ torch.randn(4, 1, generator=gen)
    net = torch.nn.Linear(4, 1)
    return net, x, y, lambda x, y: torch.nn.functional.mse_loss(net(x), y)


def test_lr_scheduler_drives_the_base_optimizer():
    net, x, y, closure = linear_problem()
    base = torch.optim.SGD(net.parameters(), lr=0.1)
    opt = OTMDROptimizer(net, base, rho=0.05, seed=0)
    on_base = torch.optim.lr_scheduler.StepLR(base, step_size=1, gamma=0.5)
    opt.step(closure, x, y)
    on_base.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    on_wrapper = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(closure, x, y)
    on_wrapper.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.025)


def test_compute_gradients_then_step_is_the_same_step():
    net, x, y, closure = linear_problem()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = OTMDROptimizer(net, torch.optim.SGD(net.parameters(), lr=0.1), rho=0.05, seed=1)
    opt.step(closure, x, y)
    one_call = {k: v.clone() for k, v in net.state_dict().items()}

    net.load_state_dict(start)
    opt = OTMDROptimizer(net, torch.optim.SGD(net.parameters(), lr=0.1), rho=0.05, seed=1)
    loss = opt.compute_gradients(closure, x, y)
    assert torch.equal(net.weight.detach(), start["weight"])  # restored, gradient left
    assert net.weight.grad is not None
    assert opt.step() == loss
    for k, v in net.state_dict().items():
        assert torch.equal(v, one_call[k])
    with pytest.raises(ValueError, match="needs the batch"):
        opt.step()


def test_state_dict_resumes_splits_and_base_state():
    net, x, y, closure = linear_problem()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = OTMDROptimizer(net, torch.optim.Adam(net.parameters(), lr=0.01), rho=0.05, noise_std=0.01)
    opt.step(closure, x, y)
    saved_net = {k: v.clone() for k, v in net.state_dict().items()}
    saved = copy.deepcopy(opt.state_dict())  # torch state dicts hold references
    opt.step(closure, x, y)
    after = {k: v.clone() for k, v in net.state_dict().items()}

    net.load_state_dict(start)
    fresh = OTMDROptimizer(
        net, torch.optim.Adam(net.parameters(), lr=0.01), rho=0.05, noise_std=0.01
    )
    net.load_state_dict(saved_net)
    fresh.load_state_dict(saved)
    fresh.step(closure, x, y)
    for k, v in net.state_dict().items():
        assert torch.equal(v, after[k])


def test_non_finite_loss_raises_with_params_intact_and_training_goes_on():
    net, x, y, _ = linear_problem()
    opt = OTMDROptimizer(net, torch.optim.SGD(net.parameters(), lr=0.05), rho=0.05, seed=0)
    calls = {"n": 0}

    def closure(x, y):
        calls["n"] += 1
        loss = torch.nn.functional.mse_loss(net(x), y)
        return loss * float("nan") if calls["n"] == 8 else loss  # step 3, second ascent pass

    losses, skipped = [], 0
    for _ in range(6):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        try:
            losses.append(opt.step(closure, x, y))
        except NonFiniteLossError as err:
            assert "particle 1, ascent step 2" in str(err)
            skipped += 1
            for k, v in net.state_dict().items():
                assert torch.equal(v, before[k])
            assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    assert skipped == 1 and len(losses) == 5
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rho": 0.0}, ValueError, "rho must be"),
        ({"rho": 0.05, "rho2": -1.0}, ValueError, "rho2 must be"),
        ({"rho": 0.05, "n_particles": 0}, ValueError, "n_particles must be"),
        ({"rho": 0.05, "noise_std": -1.0}, ValueError, "noise_std must be"),
        ({"rho": 0.05, "perturb": lambda name: False}, ValueError, "no parameter to perturb"),
        ({"rho": 0.05, "no_sync": 3}, TypeError, "no_sync"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    net = torch.nn.Linear(2, 1)
    with pytest.raises(error, match=message):
        OTMDROptimizer(net, torch.optim.SGD(net.parameters(), lr=0.1), **kwargs)


def test_params_must_belong_to_the_base_optimizer():
    net, other = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="not in the base optimiser"):
        OTMDROptimizer(net, torch.optim.SGD(other.parameters(), lr=0.1), rho=0.05)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        OTMDROptimizer(net, "sgd", rho=0.05)
    with pytest.raises(ValueError, match="call the loss once"):
        OTMDROptimizer([], torch.optim.SGD(net.parameters(), lr=0.1), rho=0.05)


def test_frozen_and_unlisted_parameters():
    net, x, y, closure = linear_problem()
    net.bias.requires_grad_(False)
    bias = net.bias.detach().clone()
    base = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.1)
    opt = OTMDROptimizer([("weight", net.weight)], base, rho=0.05)
    opt.step(closure, x, y)
    assert torch.equal(net.bias.detach(), bias)  # frozen: no gradient, no weight decay


def test_lightning_manual_optimisation_counts_steps_and_drives_the_scheduler():
    L = pytest.importorskip("lightning")
    net, x, y, closure = linear_problem()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.net = net

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.compute_gradients(closure, *batch)
            opt.step()

        def on_train_epoch_end(self):
            self.lr_schedulers().step()

        def configure_optimizers(self):
            base = torch.optim.SGD(self.net.parameters(), lr=0.1)
            opt = OTMDROptimizer(self.net, base, rho=0.05, seed=0)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    start = net.weight.detach().clone()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(Module(), train_dataloaders=loader)
    assert trainer.global_step == 4
    assert not torch.equal(net.weight.detach(), start)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)
