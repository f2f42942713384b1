"""Experiments on a regression data set (diabetes): the model built, the monitored RMSE, the
regression metrics, what is refused (attacks, shifts, OOD, other models), and the example."""

import runpy
import sys
from pathlib import Path

import pytest

from pyro_otmdr.bayes.bnn import BayesianRegressor
from pyro_otmdr.experiments import (
    ExperimentConfig,
    attack_experiment,
    build_experiment,
    evaluate_experiment,
    names,
    ood_inputs,
    run_experiment,
    shift_experiment,
    train_experiment,
)
from pyro_otmdr.workflow import data

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = {"dataset": "diabetes", "epochs": 2, "hidden": (16,), "num_samples": 4}
REGRESSION_KEYS = {"rmse", "mae", "nll", "crps", "coverage_50", "coverage_90", "coverage_95",
                   "interval_width_90", "calibration_error"}  # fmt: skip


def test_the_regression_names_agree():
    assert names.REGRESSION_DATASETS == data.REGRESSION_DATASETS
    assert set(names.REGRESSION_DATASETS) <= set(names.DATASET_NAMES)


def test_a_diabetes_run_builds_a_normal_regression_bnn_and_monitors_the_rmse():
    experiment = build_experiment(ExperimentConfig(guide="normal", method="otmdr", **TINY))
    assert isinstance(experiment.model, BayesianRegressor) and experiment.is_regression
    assert experiment.model.likelihood == "normal" and experiment.model.net[-1].out_features == 1
    lines = []
    history = train_experiment(experiment, log=lines.append)
    assert {"epoch", "loss", "val_rmse", "lr"} <= set(history[0]) and len(history) == 2
    assert "val rmse" in lines[0]
    metrics = evaluate_experiment(experiment).metrics
    assert set(metrics) == REGRESSION_KEYS and metrics["rmse"] < 1.2


@pytest.mark.parametrize(("guide", "method"), [("delta", "sam"), ("ensemble", "otmdr")])
def test_every_guide_family_runs_on_diabetes(guide, method):
    metrics = run_experiment(guide=guide, method=method, num_members=2, **TINY)
    assert set(metrics) == REGRESSION_KEYS


def test_what_a_regression_run_refuses():
    with pytest.raises(ValueError, match="use model 'mlp'"):
        ExperimentConfig(dataset="diabetes", model="cnn").resolved()
    with pytest.raises(ValueError, match="data_robust 'none'"):
        ExperimentConfig(dataset="diabetes", data_robust="trades").resolved()
    experiment = build_experiment(ExperimentConfig(guide="delta", method="svi", **TINY))
    with pytest.raises(ValueError, match="attacks are for classifiers"):
        attack_experiment(experiment)
    with pytest.raises(ValueError, match="input shifts are for classifiers"):
        shift_experiment(experiment)
    with pytest.raises(ValueError, match="regression data set"):
        ood_inputs(experiment, "fakedata")


def test_the_regression_example_runs(monkeypatch, capsys, tmp_path):
    script = "regression_diabetes.py"
    argv = [script, "--epochs", "1", "--particles", "1", "--hidden", "8", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    assert "rmse" in out and "crps" in out and "coverage_90" in out
    for key in ("svi", "otmdr"):
        assert (tmp_path / f"regression_calibration_{key}.png").is_file()
        assert (tmp_path / f"regression_calibration_{key}_pit.png").is_file()
