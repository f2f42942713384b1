"""Fine-tuning a finished run from Python: it starts from the parent's exact parameters, the
re-initialisation and weight-noise rules, the parent record, resuming, and every bad input
leaving every file as it was."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import SVI

import pyro_otmdr.experiments.cli.rundir as run_files
from pyro_otmdr.experiments import (
    ExperimentConfig,
    build_experiment,
    finetune,
    finetune_config,
    last_linear_sites,
    read_parent_record,
    start_from,
    train_experiment,
)
from pyro_otmdr.experiments.cli import main
from pyro_otmdr.experiments.cli.parser import RunError, UsageError
from pyro_otmdr.experiments.cli.rundir import save_run_checkpoint, write_json
from pyro_otmdr.experiments.cli.runlock import run_lock
from pyro_otmdr.experiments.experiment import warm_up
from pyro_otmdr.workflow.checkpoint import load_checkpoint
from pyro_otmdr.workflow.models import simple

#: The module, not the function of the same name the package exports.

TINY = ["--epochs", "1", "--hidden", "16", "--num-samples", "2", "--members", "2"]
TINY += ["--batch-size", "64", "--device", "cpu", "--quiet"]
SMALL = {"hidden": (16,), "num_samples": 2, "num_members": 2, "batch_size": 64, "epochs": 1}
WEIGHTS, LAST = ("net.0.weight", "net.2.weight"), ("net.2.weight", "net.2.bias")


class _Stop(Exception):
    """Stops a fine-tuning after its first step."""


def _finished_run(out: Path, **settings) -> Path:
    """A finished run as far as fine-tuning needs: ``config.json`` and the checkpoint of the last
    epoch, written as ``otmdr train`` writes them (without its test evaluation and plots)."""
    experiment = build_experiment(ExperimentConfig(**settings))
    out.mkdir(parents=True)
    write_json(out / "config.json", experiment.config.to_dict())
    history = []

    def save(stats, record):
        history.append(record)
        save_run_checkpoint(out / "checkpoint.pt", experiment, record["epoch"], 1, history)

    train_experiment(experiment, on_epoch=save)
    return out


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run per guide (plain SVI, one epoch)."""
    root = tmp_path_factory.mktemp("parents")
    return {
        guide: _finished_run(root / guide, guide=guide, method="svi", **SMALL)
        for guide in ("delta", "normal", "ensemble")
    }


def _hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) and its SHA-256."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _saved(run_dir: Path) -> dict[str, torch.Tensor]:
    """The unconstrained parameters of a run's checkpoint."""
    saved = load_checkpoint(run_dir / "checkpoint.pt", param_store=False, restore_rng=False)
    return saved.contents["param_store"]["params"]


def _store() -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}


def _names(guide: str, site: str, scales: bool = True) -> list[str]:
    """The param-store names of ``site``'s guide values (delta, normal, ensemble of 2)."""
    if guide == "normal":
        return [f"AutoNormal.locs.{site}"] + [f"AutoNormal.scales.{site}"] * scales
    if guide == "ensemble":
        return [f"AutoDeltaEnsemble.members.{m}.{site}" for m in range(2)]
    return [f"AutoDelta.{site}"]


COMBOS = [  # every guide, method and data-robust loss at least once
    ("delta", "svi", "none"),
    ("delta", "otmdr", "wdat"),
    ("normal", "sam", "trades"),
    ("normal", "otmdr", "armor"),
    ("ensemble", "sam", "at"),
    ("ensemble", "svi", "wdat"),
    ("ensemble", "otmdr", "none"),
]


@pytest.mark.parametrize(("guide", "method", "data_robust"), COMBOS)
def test_the_first_step_starts_from_the_parents_exact_parameters(
    parents, tmp_path, monkeypatch, guide, method, data_robust
):
    parent, seen = parents[guide], {}
    before, original = _hashes(parent), SVI.step

    def first_step(svi, *args, **kwargs):
        seen.update(params=_store(), optim=svi.optim.get_state())
        seen["loss"] = original(svi, *args, **kwargs)  # the loss runs for real
        raise _Stop

    monkeypatch.setattr(SVI, "step", first_step)
    with pytest.raises(_Stop):
        finetune(parent, tmp_path / "new", method=method, data_robust=data_robust, batch_size=16)
    saved = _saved(parent)
    assert set(seen["params"]) == set(saved)
    assert all(torch.equal(seen["params"][name], saved[name]) for name in saved)
    assert seen["optim"] == {} and math.isfinite(seen["loss"])  # a fresh optimiser
    assert _hashes(parent) == before  # the parent's files, byte for byte
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert (config["method"], config["data_robust"], config["batch_size"]) == (
        method,
        data_robust,
        16,
    )


def test_a_finetuned_run_records_its_parent_and_counts_its_own_epochs(parents, tmp_path):
    parent, new = parents["delta"], tmp_path / "new"
    before = _hashes(parent)
    metrics = finetune(parent, new, method="sam", lr=5e-3, device="cpu")
    assert _hashes(parent) == before
    assert 0 <= metrics["accuracy"] <= 1
    assert metrics == json.loads((new / "metrics.json").read_text())["metrics"]
    parent_config = json.loads((parent / "config.json").read_text())
    config = json.loads((new / "config.json").read_text())
    assert config == {**parent_config, "method": "sam", "lr": 5e-3}

    record = read_parent_record(new)
    assert record == json.loads((new / "parent.json").read_text())
    assert record["run_dir"] == str(parent.resolve())
    assert record["checkpoint_sha256"] == before["checkpoint.pt"]
    assert (record["epoch"], record["reinit_last"], record["weight_noise"]) == (1, False, 0.0)
    assert record["config_fingerprint"] == ExperimentConfig.from_dict(parent_config).fingerprint()
    assert read_parent_record(parent) is None  # trained from scratch

    checkpoint = load_checkpoint(new / "checkpoint.pt", param_store=False, restore_rng=False)
    history = json.loads((new / "history.json").read_text())
    assert checkpoint.epoch == 1 and [r["epoch"] for r in history] == [1]  # counted from 0
    assert history[0]["lr"] == 5e-3  # a fresh schedule: the first epoch at the full rate


@pytest.mark.parametrize("guide", ["delta", "normal", "ensemble"])
def test_reinit_last_resets_exactly_the_last_layer_to_a_fresh_runs_start(parents, guide):
    parent = parents[guide]
    experiment, record = start_from(parent, reinit_last=True, device="cpu")
    after, saved = _store(), _saved(parent)
    last = {name for site in LAST for name in _names(guide, site)}
    assert record["reinit_last"] and record["reinit_sites"] == list(LAST)
    assert last <= set(after) and set(after) == set(saved)
    for name in after:  # exactly the last layer differs from the parent
        assert torch.equal(after[name], saved[name]) == (name not in last), name
    if guide == "normal":
        for site in LAST:
            scale = pyro.param(f"AutoNormal.scales.{site}").detach()
            assert torch.allclose(scale, torch.full_like(scale, 1e-3))  # init_scale
    fresh = build_experiment(experiment.config)  # what a new run starts from
    warm_up(fresh)
    start = _store()
    assert all(torch.equal(after[name], start[name]) for name in last)
    if guide == "ensemble":  # each member its own draw
        members = _names(guide, "net.2.weight")
        assert not torch.equal(after[members[0]], after[members[1]])


@pytest.mark.parametrize("guide", ["delta", "normal", "ensemble"])
def test_weight_noise_adds_std_times_each_weights_std_and_spares_biases(parents, guide):
    parent, std = parents[guide], 0.1
    _, record = start_from(parent, weight_noise=std, device="cpu")
    after, saved = _store(), _saved(parent)
    assert record["noise_sites"] == list(WEIGHTS) and record["noise_seed"] == 0
    generator = torch.Generator().manual_seed(0)  # the run's seed, in model.random_sites order
    noised = set()
    for site in WEIGHTS:
        for name in _names(guide, site, scales=False):
            w = saved[name]
            z = torch.randn(w.shape, generator=generator, dtype=w.dtype)
            assert torch.equal(after[name], w + (std * w.std(correction=0)) * z), name
            noised.add(name)
    first = _names(guide, "net.0.weight", scales=False)[0]  # 16 x 64: the rule in numbers
    ratio = (after[first] - saved[first]) / (std * saved[first].std(correction=0))
    assert abs(ratio.mean()) < 0.15 and abs(ratio.std() - 1) < 0.1
    for name in set(after) - noised:  # biases, AutoNormal's scales
        assert torch.equal(after[name], saved[name]), name


def test_reinit_and_noise_together_leave_the_fresh_layer_without_noise(parents):
    _, record = start_from(parents["delta"], reinit_last=True, weight_noise=0.05, device="cpu")
    after, saved = _store(), _saved(parents["delta"])
    assert record["noise_sites"] == ["net.0.weight"]
    assert not torch.equal(after["AutoDelta.net.0.weight"], saved["AutoDelta.net.0.weight"])
    assert torch.equal(after["AutoDelta.net.0.bias"], saved["AutoDelta.net.0.bias"])


def test_an_interrupted_finetune_resumes_from_its_own_checkpoint(parents, tmp_path, monkeypatch):
    parent = tmp_path / "parent"
    shutil.copytree(parents["delta"], parent)
    part = tmp_path / "part"
    save = run_files.save_run_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_run_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        finetune(parent, part, epochs=2, weight_noise=0.01, device="cpu")
    monkeypatch.undo()
    record = read_parent_record(part)
    shutil.rmtree(parent)  # the parent is gone: the resume reads the new run only
    assert main(["train", "--resume", str(part), "--quiet", "--device", "cpu"]) == 0
    assert read_parent_record(part) == record and record["run_dir"] == str(parent.resolve())
    resumed = _saved(part)
    experiment, _ = start_from(parents["delta"], epochs=2, weight_noise=0.01, device="cpu")
    train_experiment(experiment)  # the same fine-tuning, uninterrupted
    whole = _store()
    assert set(whole) == set(resumed)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)  # bit for bit


def test_finetune_config_keeps_the_parents_values_and_follows_the_computed_lr():
    parent = ExperimentConfig(guide="delta", lr=0.003, epochs=30).resolved()
    assert finetune_config(parent, epochs=5).lr == 0.003  # the parent's own rate
    assert finetune_config(ExperimentConfig().resolved(), optimizer="sgd").lr == 0.1
    assert finetune_config(parent, hidden=[128]).hidden == (128,)  # the same model
    with pytest.raises(UsageError, match=r"guide \(--guide\) 'normal' would change the model"):
        finetune_config(parent, guide="normal")
    cifar = ExperimentConfig(dataset="cifar10", model="cnn", guide="delta").resolved()
    assert finetune_config(cifar, seed=3).seed == 3  # CIFAR's split is not drawn from the seed
    with pytest.raises(UsageError, match="would change the data split"):
        finetune_config(cifar, val_size=100)


def test_last_linear_sites_refuses_a_network_without_a_last_linear_layer(monkeypatch):
    experiment = build_experiment(ExperimentConfig(model="cnn", width=4, epochs=1))
    assert last_linear_sites(experiment) == ("net.classifier.weight", "net.classifier.bias")
    monkeypatch.setattr(simple.MLP, "forward", lambda self, x: torch.tanh(self[-1](self[0](x))))
    with pytest.raises(UsageError, match="no identifiable last linear layer"):
        last_linear_sites(build_experiment(ExperimentConfig(hidden=(8,), epochs=1)))


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory) -> Path:
    """A run stopped after epoch 1 of 2 (Ctrl-C after its first checkpoint)."""
    run = tmp_path_factory.mktemp("unfinished") / "run"
    save = run_files.save_run_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    patch = pytest.MonkeyPatch()
    patch.setattr(run_files, "save_run_checkpoint", save_then_stop)
    try:
        flags = [*TINY, "--guide", "delta", "--method", "svi", "--epochs", "2"]
        assert main(["train", *flags, "--out", str(run)]) == 130
    finally:
        patch.undo()
    return run


BAD = [  # (keywords, the error, its message)
    ({"weight_noise": -0.1}, UsageError, "weight-noise must be a number >= 0"),
    ({"weight_noise": math.nan}, UsageError, "weight-noise must be a number >= 0"),
    ({"hidden": (32,)}, UsageError, r"hidden \(--hidden\) \(32,\) would change the model"),
    ({"num_members": 3}, UsageError, "would change the model"),
    ({"seed": 1}, UsageError, "seed .* would change the data split"),
    ({"colour": "red"}, UsageError, "unknown settings"),
    ({"epochs": 0}, UsageError, "epochs must be an integer > 0"),
    ({"out": "PARENT"}, UsageError, "is the parent run directory"),
    ({"out": "PARENT/sub"}, UsageError, "is inside the parent run directory"),
    ({"out": "OTHER"}, UsageError, "holds a run already .* --overwrite"),
    ({"run_dir": "missing"}, UsageError, "there is no run directory"),
    ({"run_dir": "UNFINISHED"}, RunError, r"not finished training.*otmdr train --resume"),
    ({"run_dir": "NO_CHECKPOINT"}, RunError, "no checkpoint.pt"),
    ({"run_dir": "EDITED"}, RunError, "does not match the configuration"),
    ({"run_dir": "DAMAGED"}, RunError, "is not a readable checkpoint"),
    ({"reinit_last": True, "tanh": True}, UsageError, "no identifiable last linear layer"),
]


@pytest.mark.parametrize(("keywords", "error", "message"), BAD)
def test_a_bad_input_says_what_to_do_and_leaves_every_file_as_it_was(
    parents, unfinished, tmp_path, monkeypatch, keywords, error, message
):
    keywords = dict(keywords)
    parent = parents["delta"]
    shutil.copytree(parents["normal"], tmp_path / "other")  # a run already in --out
    shutil.copytree(parent, tmp_path / "no-checkpoint")
    (tmp_path / "no-checkpoint" / "checkpoint.pt").unlink()
    shutil.copytree(parent, tmp_path / "edited")
    edited = json.loads((parent / "config.json").read_text())
    (tmp_path / "edited" / "config.json").write_text(json.dumps({**edited, "lr": 0.5}))
    shutil.copytree(parent, tmp_path / "damaged")
    data = (parent / "checkpoint.pt").read_bytes()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    places = {
        "PARENT": parent,
        "OTHER": tmp_path / "other",
        "UNFINISHED": unfinished,
        "NO_CHECKPOINT": tmp_path / "no-checkpoint",
        "EDITED": tmp_path / "edited",
        "DAMAGED": tmp_path / "damaged",
    }

    def place(text: str) -> Path:
        head, _, rest = text.partition("/")
        return places[head] / rest if head in places else tmp_path / text

    run_dir = place(keywords.pop("run_dir", "PARENT"))
    out = place(keywords.pop("out", "new"))
    if keywords.pop("tanh", False):
        monkeypatch.setattr(simple.MLP, "forward", lambda s, x: torch.tanh(s[-1](s[0](x))))
    before = {p: _hashes(p) for p in (parent, unfinished, tmp_path)}
    with pytest.raises(error, match=message):
        finetune(run_dir, out, device="cpu", **keywords)
    assert {p: _hashes(p) for p in (parent, unfinished, tmp_path)} == before
    assert out.exists() == (out in places.values())


def test_a_parent_that_another_process_writes_is_refused(parents, tmp_path):
    parent = tmp_path / "parent"
    shutil.copytree(parents["delta"], parent)
    with run_lock(parent, "train"):  # as a running otmdr train holds it
        before = _hashes(parent)
        with pytest.raises(RunError, match=r"in use by another otmdr process .*otmdr train"):
            finetune(parent, tmp_path / "new", device="cpu")
        assert _hashes(parent) == before and not (tmp_path / "new").exists()


def test_a_damaged_parent_record_is_an_error(tmp_path):
    (tmp_path / "parent.json").write_text('{"run_dir": "x"}')
    with pytest.raises(RunError, match="not the record of a parent run"):
        read_parent_record(tmp_path)
    (tmp_path / "parent.json").write_text("{")
    with pytest.raises(RunError, match="not readable JSON"):
        read_parent_record(tmp_path)
