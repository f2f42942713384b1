"""Local latent variables under OT-MDR and SAM: a VAE, a model with per-example latents and an
amortised guide. Their noise is drawn per example, once per step, and split with the halves row
for row with the data; a local site that cannot be aligned with the batch is refused by name.
"""

import runpy
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_otmdr import OTMDR, SAM, OTMDROptimizer
from pyro_otmdr.model_space import StepSavings
from pyro_otmdr.model_space.batching import split_in_halves, with_rows, without_rows
from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise
from pyro_otmdr.model_space.subsampling import PlateScaling
from tests.conftest import DEVICES
from tests.model_space.test_elbo import halves_in_order

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
N = 64


class TinyVAE(nn.Module):
    """A VAE on 6 binary pixels, ``z`` in R^2; ``plate``: the data plate of model and guide."""

    def __init__(self, plate="idiom", hidden=16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 4))
        self.decoder = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 6))
        self.plate_kind = plate
        self.seen = []  # (the example ids, the guide's noise) of every guide call

    def plate(self, x):
        if self.plate_kind == "idiom":
            return pyro.plate("data", N, subsample_size=len(x))
        return pyro.plate("data", len(x))  # Pyro's VAE tutorial: a sum over the batch

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with self.plate(x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x[..., :6])

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with self.plate(x):
            loc, raw = self.encoder(x[..., :6]).chunk(2, -1)
            scale = nn.functional.softplus(raw) + 1e-3
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        ids = x[..., 6].long() if x.shape[-1] > 6 else None
        self.seen.append((ids, ((z - loc) / scale).detach()))


def pixels(n=N, seed=0, with_ids=False):
    """Two patterns of 6 pixels, 5% of the pixels flipped: a VAE can learn them."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 1]])
    x = patterns[torch.randint(2, (n,), generator=gen)]
    x = (x + (torch.rand(n, 6, generator=gen) < 0.05).float()) % 2
    return torch.cat([x, torch.arange(n).float()[:, None]], -1) if with_ids else x


def fit_vae(loss, vae, x, epochs=30, batch=16, lr=1e-2):
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), loss=loss)
    per_epoch = []
    for _ in range(epochs):
        per_epoch.append(sum(svi.step(b) for b in x.split(batch)) / len(x.split(batch)))
    return per_epoch


# -- the noise follows its example ---------------------------------------------------------------


def test_each_example_keeps_its_noise_in_the_halves_and_the_whole_batch():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae, x = TinyVAE(), pixels(16, with_ids=True)
    loss = OTMDR(Trace_ELBO(), rho=0.1, n_particles=2, seed=0)
    loss.loss_and_grads(vae.model, vae.guide, x)
    assert [len(ids) for ids, _ in vae.seen] == [8, 8, 16] * 2  # halves, whole, per particle
    whole = loss.last_step.reparam_noise["z"]
    assert whole.shape == (16, 2)  # one kappa per example of the batch
    for ids, kappa in vae.seen:
        torch.testing.assert_close(kappa, whole[ids])  # example i: kappa_i in every pass
    halves = [set(ids.tolist()) for ids, _ in vae.seen[:2]]
    assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == set(range(16))


@pytest.mark.parametrize("device", DEVICES)
def test_the_handler_draws_each_examples_noise_once_and_splits_it_with_the_rows(device):
    def guide(x):
        with pyro.plate("data", 100, subsample_size=len(x), device=x.device):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    x = torch.zeros(7, 3, device=device)
    args, kwargs = with_rows((x,), {})
    first, second = split_in_halves(args, kwargs, torch.Generator().manual_seed(0))
    handler = FixedReparamNoise.for_batch(args, kwargs)
    values = {}
    for label, batch in (("first", first), ("second", second), ("whole", (args, kwargs))):
        (half_args, _), rows = without_rows(batch)
        with handler.on_rows(rows):
            values[label] = (rows, poutine.trace(handler(guide)).get_trace(*half_args))
    kappa = handler.noise["z"]
    assert kappa.shape == (7, 3) and kappa.device.type == device and not kappa.isnan().any()
    for rows, trace in values.values():
        site = trace.nodes["z"]
        assert torch.equal(site["value"], kappa[rows.to(device)])  # loc 0, scale 1: kappa
        reference = dist.Normal(torch.zeros(len(rows), 3, device=device), 1.0).to_event(1)
        torch.testing.assert_close(  # the closed-form log-density at its own sample
            site["fn"].log_prob(site["value"]), reference.log_prob(site["value"])
        )


def test_the_data_plate_is_told_from_a_guide_plate_that_has_a_halfs_size():
    """``groups`` has 4 entries, as many as a half of 8 examples: its site is global and keeps
    the noise it first drew (the model's observed sites name the data plate)."""

    def model(y):
        with pyro.plate("groups", 4):
            g = pyro.sample("g", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        with pyro.plate("data", 50, subsample_size=len(y)):
            pyro.sample("obs", dist.Normal(g.sum(), 1.0), obs=y)

    pyro.clear_param_store()
    guide = AutoNormal(model)
    seen = []

    def spy(y):
        out = guide(y)
        seen.append(((out["g"] - guide.locs.g) / guide.scales.g).detach().clone())
        return out

    y = torch.randn(8)
    loss = OTMDR(Trace_ELBO(), rho=0.1, seed=0)
    loss.loss_and_grads(model, spy, y)
    assert loss.last_step.reparam_noise["g_unconstrained"].shape == (4, 1)  # not one per example
    for kappa in seen[1:]:
        torch.testing.assert_close(kappa, seen[0])


def test_plate_scaling_names_the_data_plate_and_refuses_a_summed_local_site():
    vae, x = TinyVAE(plate="sum"), pixels(8)
    scaling = PlateScaling(batch_size=8)
    with scaling:
        Trace_ELBO().loss(vae.model, vae.guide, x)
    assert scaling.batch_plates == {"data"} and not scaling.holds
    vae = TinyVAE()
    scaling = PlateScaling(batch_size=8)
    with scaling:
        Trace_ELBO().loss(vae.model, vae.guide, x)
    assert scaling.batch_plates == {"data"} and scaling.holds


# -- training ---------------------------------------------------------------------------------


VECTORISED = lambda: Trace_ELBO(num_particles=2, vectorize_particles=True)  # noqa: E731


@pytest.mark.parametrize(
    ("plate", "elbo"),
    [
        ("idiom", Trace_ELBO),
        ("sum", Trace_ELBO),
        ("idiom", TraceMeanField_ELBO),
        ("idiom", VECTORISED),
    ],
    ids=["idiom", "sum", "TraceMeanField_ELBO", "vectorised"],
)
@pytest.mark.parametrize("loss", ["OTMDR", "SAM"])
def test_a_vae_trains(plate, elbo, loss):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    wrapped = OTMDR(elbo(), rho=0.05, seed=0) if loss == "OTMDR" else SAM(elbo(), rho=0.05)
    per_epoch = fit_vae(wrapped, TinyVAE(plate), pixels(), epochs=8, lr=3e-2)
    assert per_epoch[-1] < 0.8 * per_epoch[0]


def test_savings_are_exact_with_local_latents():
    """The guide's global scale takes the whole batch's gradient at the centre; from the halves
    (the default) it is exact only because each example's noise is the same in the halves and
    the whole batch. ``StepSavings.none()`` pays the whole-batch pass instead."""

    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", N, subsample_size=len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + w, 0.5).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("q.loc", torch.zeros(2))
        scale = pyro.param("q.scale", torch.ones(2), constraint=dist.constraints.positive)
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))
        weight = pyro.param("enc.weight", 0.5 * torch.ones(2))
        with pyro.plate("data", N, subsample_size=len(x)):
            pyro.sample("z", dist.Normal(weight * x, 0.3).to_event(1))

    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(0)) + 1.0
    grads = []
    for savings in (StepSavings(), StepSavings.none()):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        loss = OTMDR(Trace_ELBO(), rho=0.2, n_particles=2, seed=1, savings=savings)
        loss.loss_and_grads(model, guide, x)
        store = pyro.get_param_store()
        grads.append({n: store[n].unconstrained().grad.clone() for n in store})
    assert set(grads[0]) == {"q.loc", "q.scale", "enc.weight"}
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-6)


def test_a_model_with_per_example_latents_under_autonormal():
    """``u_i`` per example, in a plate subsampled by the examples' indices (AutoNormal indexes
    its local parameters with them): its locs are perturbed, its scales are not."""

    def model(idx, y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", N, subsample=idx):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu + u, 0.5), obs=y)

    def plates(idx, y):
        return pyro.plate("data", N, subsample=idx)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    idx = torch.arange(N)
    y = 3.0 + torch.randn(N, generator=torch.Generator().manual_seed(1))
    guide = AutoNormal(model, create_plates=plates)
    loss = OTMDR(Trace_ELBO(), rho=0.01)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    losses = []
    for _ in range(40):
        perm = torch.randperm(N)
        losses += [svi.step(idx[b], y[b]) for b in perm.split(16)]
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert loss.last_step.reparam_noise["u_unconstrained"].shape == (
        16,
    )  # one kappa per example of the batch


def test_a_vae_trains_through_the_torch_optimiser_route():
    class Model(pyro.nn.PyroModule):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, x):
            return self.vae.model(x)

    class Guide(Model):
        def forward(self, x):
            return self.vae.guide(x)

    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(0)
        vae = TinyVAE()
        loss_fn = Trace_ELBO()(Model(vae), Guide(vae))
        base = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
        opt = OTMDROptimizer(loss_fn.named_parameters(), base, rho=0.05, seed=0)
        x = pixels(with_ids=False)
        per_epoch = [
            sum(opt.step(loss_fn, b) for b in x.split(16)) / len(x.split(16)) for _ in range(20)
        ]
    assert per_epoch[-1] < per_epoch[0] - 0.02 * abs(per_epoch[0])
    assert opt.last_step.reparam_noise["z"].shape == (16, 2)


# -- refused -----------------------------------------------------------------------------------


def test_a_local_site_outside_the_data_plate_is_refused_by_name():
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(2))
        with pyro.plate("data", N, subsample_size=len(x)):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):  # z has the batch's rows, but no plate says so
        pyro.sample("z", dist.Normal(x, 1.0).to_event(2))

    pyro.clear_param_store()
    pyro.param("unused", torch.zeros(1))  # a parameter, so that the step reaches the passes
    params = {n: p.detach().clone() for n, p in pyro.get_param_store().items()}
    loss = OTMDR(Trace_ELBO(), rho=0.1, seed=0)
    guide_with_param = lambda x: (pyro.param("unused"), guide(x))  # noqa: E731
    with pytest.raises(ValueError, match=r"guide site 'z' changed shape.*data plate"):
        loss.loss_and_grads(model, guide_with_param, torch.randn(8, 2))
    for name, value in params.items():
        assert torch.equal(pyro.param(name).detach(), value)


def test_a_split_that_drops_the_row_numbers_is_refused_for_local_sites():
    pyro.clear_param_store()
    vae = TinyVAE()
    loss = OTMDR(Trace_ELBO(), rho=0.1, split_batch=halves_in_order)  # returns halves, no kwargs
    with pytest.raises(ValueError, match=r"guide site 'z'.*custom split_batch"):
        loss.loss_and_grads(vae.model, vae.guide, pixels(8))


# -- the example ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_example():
    return runpy.run_path(str(EXAMPLES / "vae_digits.py"))


def test_a_vaes_elbo_improves_under_otmdr_on_digits(vae_example):
    args = vae_example["parse_args"](["--epochs", "3", "--latent", "4"])
    history, test_elbo = vae_example["run"](OTMDR(Trace_ELBO(), rho=0.05, seed=0), args)
    assert history[-1] < history[0] - 3.0  # the training loss per image, first vs last epoch
    assert -40.0 < test_elbo < -20.0  # nats per binarised 8x8 image


def test_the_vae_example_runs(monkeypatch, capsys):
    argv = [
        "vae_digits.py",
        "--epochs",
        "1",
        "--latent",
        "2",
        "--likelihood",
        "continuous-bernoulli",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "vae_digits.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "SVI (Trace_ELBO)" in out and "OT-MDR" in out and out.count("test ELBO") == 2
