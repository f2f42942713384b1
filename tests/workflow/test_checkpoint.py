"""Checkpoints: bit-exact resume, atomic writes, and clear refusals of bad files."""

import os

import pyro
import pyro.distributions.constraints as constraints
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_otmdr import OTMDR
from pyro_otmdr.model_space.optim import OTMDROptimizer
from pyro_otmdr.workflow.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.model_space.test_elbo import data, make_model

STEPS = 6


def batches():
    y = data("cpu", n=32, seed=4)
    return [y[i : i + 8] for i in range(0, 32, 8)] * 2


def build():
    """A fresh model, guide, optimiser and loss, as a resumed program would build them."""
    model = make_model("cpu")
    guide = AutoNormal(model, init_scale=0.1)
    optim = pyro.optim.Adam({"lr": 0.05})
    loss = OTMDR(Trace_ELBO(), rho=0.1, n_particles=2, noise_std=0.01, seed=1)
    return guide, SVI(model, guide, optim, loss=loss)


def store_snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def train(svi, steps):
    for y in steps:
        svi.step(y)


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    data_steps = batches()[:STEPS]
    pyro.set_rng_seed(0)
    guide, svi = build()
    train(svi, data_steps)
    uninterrupted = store_snapshot()

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide, svi = build()
    train(svi, data_steps[: STEPS // 2])
    save_checkpoint(tmp_path / "ckpt.pt", optim=svi.optim, loss=svi.loss, epoch=0, step=STEPS // 2)

    pyro.clear_param_store()  # clear everything; scramble every RNG
    pyro.set_rng_seed(123)
    guide, svi = build()
    guide(data_steps[0])  # set the autoguide up before loading
    ckpt = load_checkpoint(tmp_path / "ckpt.pt", optim=svi.optim, loss=svi.loss)
    assert (ckpt.epoch, ckpt.step) == (0, STEPS // 2)
    train(svi, data_steps[ckpt.step :])
    resumed = store_snapshot()

    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name


def test_loading_into_an_empty_param_store_creates_the_parameters(tmp_path):
    _, svi = build()
    train(svi, batches()[:2])
    before = store_snapshot()
    save_checkpoint(tmp_path / "c.pt", optim=svi.optim, loss=svi.loss, step=2)
    pyro.clear_param_store()
    load_checkpoint(tmp_path / "c.pt")
    after = store_snapshot()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    scale = pyro.get_param_store().get_param("AutoNormal.scales.a")
    assert (scale > 0).all()  # the constraint came back


def test_torch_route_checkpoint_round_trip(tmp_path):
    net = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    base = torch.optim.Adam(net.parameters(), lr=0.01)
    opt = OTMDROptimizer(net, base, rho=0.05, noise_std=0.01, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(base, step_size=1, gamma=0.9)

    def closure(x, y):
        return torch.nn.functional.mse_loss(net(x), y)

    opt.step(closure, x, y)
    sched.step()
    save_checkpoint(
        tmp_path / "t.pt", optim=opt, module=net, scheduler=sched, epoch=1, step=1, extra={"a": 1}
    )
    opt.step(closure, x, y)
    expected = {k: v.clone() for k, v in net.state_dict().items()}

    net2 = torch.nn.Linear(3, 1)
    base2 = torch.optim.Adam(net2.parameters(), lr=0.01)
    opt2 = OTMDROptimizer(net2, base2, rho=0.05, noise_std=0.01, seed=99)
    sched2 = torch.optim.lr_scheduler.StepLR(base2, step_size=1, gamma=0.9)
    ckpt = load_checkpoint(tmp_path / "t.pt", optim=opt2, module=net2, scheduler=sched2)
    assert ckpt.extra == {"a": 1} and base2.param_groups[0]["lr"] == pytest.approx(0.009)

    def closure2(x, y):
        return torch.nn.functional.mse_loss(net2(x), y)

    opt2.step(closure2, x, y)
    for k, v in net2.state_dict().items():
        assert torch.equal(v, expected[k])


# -- atomic writes -------------------------------------------------------------------------------


def saved_ok(path):
    _, svi = build()
    train(svi, batches()[:1])
    save_checkpoint(path, optim=svi.optim, loss=svi.loss, step=1)
    return svi


@pytest.mark.parametrize("where", ["torch.save", "os.replace", "midway"])
def test_a_crash_during_a_save_leaves_the_old_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "ckpt.pt"
    svi = saved_ok(path)
    old = path.read_bytes()
    if where == "torch.save":
        monkeypatch.setattr(torch, "save", _raise)
    elif where == "os.replace":
        monkeypatch.setattr(os, "replace", _raise)
    else:

        def dies_midway(fd):
            os.ftruncate(fd, 100)  # part of the file is written, then the process dies
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "fsync", dies_midway)
    with pytest.raises((OSError, KeyboardInterrupt)):
        save_checkpoint(path, optim=svi.optim, loss=svi.loss, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def _raise(*args, **kwargs):
    raise OSError("disk full")


# -- bad files ---------------------------------------------------------------------------------


def test_truncated_and_corrupted_checkpoints_are_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    saved_ok(path)
    raw = path.read_bytes()
    (tmp_path / "short.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "short.pt")
    flipped = bytearray(raw)
    flipped[len(raw) // 3 : len(raw) // 3 + 64] = b"\x00" * 64
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "flipped.pt")


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pyro_otmdr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"x": torch.nn.Linear(1, 1)}, tmp_path / "pickled.pt")  # would run code to load
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "pickled.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_unserialisable_extra_and_missing_parts_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint\['extra'\]\['f'\] is a function"):
        save_checkpoint(tmp_path / "x.pt", extra={"f": lambda: 0})
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="step must be"):
        save_checkpoint(tmp_path / "x.pt", step=-1)
    save_checkpoint(tmp_path / "x.pt", step=0)
    with pytest.raises(CheckpointError, match="no optim state"):
        load_checkpoint(tmp_path / "x.pt", optim=pyro.optim.Adam({"lr": 0.1}))


@pytest.mark.parametrize(
    "constraint",
    [
        constraints.independent(constraints.real, 2),  # AutoDelta's params of a matrix site
        constraints.independent(constraints.positive, 1),
        constraints.interval(0.0, 2.0),
        constraints.softplus_positive,
    ],
)
def test_parametrised_constraints_survive_a_round_trip(tmp_path, constraint):
    pyro.clear_param_store()
    value = torch.full((2, 3), 0.5)
    pyro.param("p", value, constraint=constraint)
    save_checkpoint(tmp_path / "c.pt", epoch=1, step=1)
    pyro.clear_param_store()
    load_checkpoint(tmp_path / "c.pt", restore_rng=False)
    restored = pyro.get_param_store()
    assert type(restored._constraints["p"]) is type(constraint)
    assert vars(restored._constraints["p"]) == vars(constraint)
    assert torch.equal(restored["p"].detach(), value)
