"""Experiments by name: configuration, builders, the schedule, OOD inputs; the example scripts."""

import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_otmdr import ARMOR, OTMDR, SAM, TRADES, WDAT, AdversarialTraining, EnsembleELBO
from pyro_otmdr.experiments import (
    DEFAULT_RHO,
    ExperimentConfig,
    build_experiment,
    make_guide,
    make_loss,
    make_optim,
    ood_inputs,
    run_experiment,
    train_experiment,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_autonormal_bnn_with_otmdr_is_close_to_plain_svi_on_digits():
    common = {"guide": "normal", "epochs": 15, "seed": 0}
    svi = run_experiment(method="svi", **common)
    otmdr = run_experiment(method="otmdr", rho=0.005, n_particles=2, **common)
    print(f"digits AutoNormal: SVI acc {svi['accuracy']:.4f}, OT-MDR acc {otmdr['accuracy']:.4f}")
    assert svi["accuracy"] > 0.9
    assert otmdr["accuracy"] > svi["accuracy"] - 0.03


@pytest.mark.slow
@pytest.mark.parametrize("method", ["svi", "sam", "otmdr"])
def test_every_method_trains_an_ensemble_on_digits(method):
    metrics = run_experiment(guide="ensemble", method=method, rho=0.05, num_members=2, epochs=4)
    assert metrics["accuracy"] > 0.85


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="delta, ensemble, normal"):
        make_guide("gaussian", None)
    with pytest.raises(ValueError, match="svi, sam, otmdr"):
        make_loss(ExperimentConfig(method="adam"))
    with pytest.raises(ValueError, match="adam, sgd"):
        ExperimentConfig(optimizer="rmsprop").resolved()
    with pytest.raises(ValueError, match="cosine, constant"):
        ExperimentConfig(schedule="step").resolved()


@pytest.mark.parametrize("guide", ["delta", "ensemble", "normal"])
def test_rho_defaults_to_the_papers_value_for_the_guide(guide):
    assert ExperimentConfig(guide=guide).resolved().rho == DEFAULT_RHO[guide]
    assert ExperimentConfig(guide=guide, rho=0.2).resolved().rho == 0.2
    assert make_loss(ExperimentConfig(guide=guide, method="sam")).rho == DEFAULT_RHO[guide]
    assert DEFAULT_RHO == {"delta": 0.05, "ensemble": 0.05, "normal": 0.005}


def test_config_round_trips_through_a_dict():
    config = ExperimentConfig(hidden=(32, 16), guide="delta", width=None).resolved()
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["hidden"] == [32, 16]
    with pytest.raises(ValueError, match="unknown configuration keys"):
        ExperimentConfig.from_dict({"learning_rate": 0.1})


def test_sgd_learning_rate_is_per_example():
    sgd = make_optim(ExperimentConfig(optimizer="sgd", lr=0.1, schedule="constant"), 1000)
    assert sgd.pt_optim_args == {"lr": 1e-4, "momentum": 0.9}
    adam = make_optim(ExperimentConfig(optimizer="adam", lr=0.01), 1000)
    assert adam.pt_optim_args == {"lr": 0.01} and adam.kwargs == {"T_max": 30}


def test_cosine_schedule_anneals_once_per_epoch_and_history_is_logged():
    config = ExperimentConfig(guide="delta", method="svi", epochs=4, hidden=(8,), lr=0.02)
    experiment = build_experiment(config)
    lines = []
    history = train_experiment(experiment, log=lines.append)
    expected = [0.01 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [r["lr"] for r in history] == pytest.approx(expected)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and len(lines) == 4
    assert "val acc" in lines[0] and "ms/step" in lines[0]
    assert history[-1]["val_accuracy"] > 0.5 and history[-1]["loss"] < history[0]["loss"]


def test_ood_inputs_have_the_runs_shape():
    experiment = build_experiment(ExperimentConfig(guide="delta", method="svi", epochs=1))
    x = ood_inputs(experiment, "fakedata")
    assert x.shape == (len(experiment.splits.test), 64) and x.dtype == torch.float32
    assert ood_inputs(experiment, "digits").shape[1:] == (64,)
    with pytest.raises(ValueError, match="digits, cifar10, cifar100, fakedata"):
        ood_inputs(experiment, "svhn")


def test_image_models_on_digits_use_8x8_images():
    config = ExperimentConfig(model="cnn", width=4, guide="delta", method="sam", epochs=1)
    experiment = build_experiment(config)
    assert experiment.splits.input_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="width applies to cnn"):
        ExperimentConfig(model="mlp", width=4).resolved()


# ------------------------------------------------------------------ the example scripts


@pytest.mark.parametrize(
    ("script", "flags"),
    [
        ("single_model.py", ["--particles", "2"]),
        ("ensemble.py", ["--members", "2"]),
        ("ensemble.py", ["--members", "2", "--baseline"]),
        ("bnn.py", []),
        ("digits_bnn.py", ["--particles", "1"]),
    ],
)
def test_example_runs_on_digits(script, flags, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--epochs", "1", *flags])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    assert "accuracy" in out


# ------------------------------------------------------------------ data-robust losses


def test_config_with_a_data_robust_loss_round_trips_and_old_configs_load():
    config = ExperimentConfig(data_robust="wdat", delta=0.05, beta=3.0, eps=0.2, budget=0.1)
    config = config.resolved()
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["data_robust"] == "wdat" and config.to_dict()["delta"] == 0.05
    old = dict(config.to_dict())
    for name in ("data_robust", "eps", "delta", "beta", "budget"):
        del old[name]  # a config.json written before these fields existed
    loaded = ExperimentConfig.from_dict(old)
    assert loaded.data_robust == "none" and (loaded.eps, loaded.delta) == (0.1, 0.1)
    assert (loaded.beta, loaded.budget) == (6.0, 0.02)


def test_make_loss_wraps_the_elbo_in_the_data_robust_loss_then_in_otmdr_or_sam():
    loss = make_loss(ExperimentConfig(method="otmdr", data_robust="armor", eps=0.2, budget=0.05))
    assert type(loss) is OTMDR and type(loss.elbo) is ARMOR
    assert type(loss.elbo.elbo) is Trace_ELBO
    assert loss.elbo.objective.eps == 0.2 and loss.elbo.objective.budget == 0.05
    sam = make_loss(ExperimentConfig(method="sam", data_robust="trades", eps=0.05, beta=2.0))
    assert type(sam) is SAM and type(sam.elbo) is TRADES and sam.elbo.objective.beta == 2.0
    wdat = make_loss(ExperimentConfig(method="svi", data_robust="wdat", delta=0.03))
    assert type(wdat) is WDAT and wdat.objective.delta == 0.03
    # the data-robust losses loop over an ensemble's members themselves
    at = make_loss(ExperimentConfig(guide="ensemble", method="svi", data_robust="at"))
    assert type(at) is AdversarialTraining and type(at.elbo) is Trace_ELBO
    assert type(make_loss(ExperimentConfig(guide="ensemble", method="svi"))) is EnsembleELBO


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data_robust": "fgsm"}, "none, at, trades, wdat, armor"),
        ({"eps": 0.0}, r"eps must be a finite number in \(0, 1\]"),
        ({"eps": 1.5}, r"eps must be a finite number in \(0, 1\]"),
        ({"delta": -0.1}, r"delta must be a finite number in \(0, 1\]"),
        ({"beta": -1.0}, "beta must be a finite number >= 0"),
        ({"beta": math.inf}, "beta must be a finite number >= 0"),
        ({"budget": 0.0}, "budget must be a finite number > 0"),
    ],
)
def test_bad_data_robust_values_are_refused_before_anything_is_built(values, message):
    config = ExperimentConfig(**{"data_robust": "armor", **values})
    with pytest.raises(ValueError, match=message):
        config.resolved()
    with pytest.raises(ValueError, match=message):
        build_experiment(config)


def test_a_setting_added_later_keeps_older_fingerprints_at_its_default():
    import hashlib
    import json

    from pyro_otmdr.experiments.config import LATER_KEYS, RUNTIME_KEYS

    config = ExperimentConfig(guide="delta", method="otmdr")
    older = {k: v for k, v in config.to_dict().items() if k not in {*RUNTIME_KEYS, *LATER_KEYS}}
    written_before = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()
    assert config.fingerprint() == written_before  # a run from before `geometry` still matches
    assert ExperimentConfig(guide="delta", geometry="layer").fingerprint() != written_before
