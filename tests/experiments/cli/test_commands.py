"""The ``otmdr`` command end to end: train -> run directory -> evaluate, compare, errors."""

import csv
import json
import runpy
import sys
from importlib.metadata import entry_points
from pathlib import Path

import arviz as az
import pytest
import torch
from torchvision import datasets

import pyro_otmdr.experiments.cli.rundir as run_files
from pyro_otmdr.experiments.cli import main
from pyro_otmdr.experiments.config import ExperimentConfig
from pyro_otmdr.workflow.checkpoint import load_checkpoint
from tests.workflow.test_data import _expect_md5, _fake_cifar10

TINY = ["--epochs", "1", "--hidden", "16", "--num-samples", "4", "--members", "2"]
TINY += ["--device", "cpu"]
RUN_FILES = (
    "config.json",
    "history.json",
    "metrics.json",
    "tree.nc",
    "checkpoint.pt",
    "calibration.png",
    "calibration_pava.png",
)


def _train(out: Path, *flags: str) -> dict:
    assert main(["train", *TINY, "--out", str(out), "--quiet", *flags]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("guide", ["delta", "ensemble", "normal"])
def test_train_writes_a_run_directory_that_evaluate_reproduces(tmp_path, capsys, guide):
    out = tmp_path / "run"
    metrics = _train(out, "--guide", guide, "--method", "otmdr")
    assert all((out / name).is_file() for name in RUN_FILES)
    config = ExperimentConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.guide == guide and config.rho == {"normal": 0.005}.get(guide, 0.05)
    assert set(metrics) >= {"split", "step_ms", "train_seconds", "steps", "metrics", "command"}
    assert metrics["metrics"]["accuracy"] > 0.5 and metrics["step_ms"] > 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1] and "val_accuracy" in history[0]

    tree = az.from_netcdf(out / "tree.nc")
    assert {"posterior_predictive", "log_likelihood", "observed_data"} <= set(tree.children)
    checkpoint = load_checkpoint(out / "checkpoint.pt", param_store=False, restore_rng=False)
    assert checkpoint.epoch == 1 and checkpoint.step == metrics["steps"]
    assert checkpoint.extra["config"] == config.to_dict() and checkpoint.contents["optim"]
    assert set(checkpoint.contents["loss"]) == {"generator", "device_generators"}  # OTMDR's

    capsys.readouterr()
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    again = json.loads((out / "evaluation-test.json").read_text())
    assert again["metrics"] == metrics["metrics"]  # same parameters, same seeded draws
    assert "accuracy" in capsys.readouterr().out
    assert (out / "calibration-test.png").is_file()
    if guide == "delta":  # another split, with an OOD set
        assert main(["evaluate", str(out), "--split", "val", "--ood", "fakedata"]) == 0
        result = json.loads((out / "evaluation-val-ood-fakedata.json").read_text())
        assert result["split"] == "val" and 0.5 < result["metrics"]["auroc_ood"] <= 1.0
        assert "temperature" not in result["metrics"]  # it is fitted on val, so not for val
        assert (out / "calibration-val-ood-fakedata_pava.png").is_file()


def test_cifar_format_archive_end_to_end(tmp_path, monkeypatch):
    _expect_md5(monkeypatch, datasets.CIFAR10, _fake_cifar10(tmp_path / "data"))
    out = tmp_path / "run"
    flags = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--model", "cnn"]
    flags += ["--width", "4", "--batch-size", "8", "--guide", "normal", "--method", "otmdr"]
    flags += ["--optimizer", "sgd"]
    metrics = _train(out, *flags)
    assert all((out / name).is_file() for name in RUN_FILES)
    assert len(az.from_netcdf(out / "tree.nc")["observed_data"]["obs"]) == 6
    history = json.loads((out / "history.json").read_text())
    assert "test_accuracy" in history[0] and history[0]["lr"] == pytest.approx(0.1)
    assert main(["evaluate", str(out), "--ood", "fakedata"]) == 0
    again = json.loads((out / "evaluation-test-ood-fakedata.json").read_text())["metrics"]
    assert again["accuracy"] == metrics["metrics"]["accuracy"] and "auroc_ood" in again


def test_missing_cifar_says_how_to_get_it(tmp_path, capsys):
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"), "--out"]
    assert main([*argv, str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "otmdr train: error:" in err and "--download" in err and "cs.toronto.edu" in err


def test_compare_writes_a_table_and_the_raw_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--guides", "delta,normal", "--methods", "svi,otmdr", "--seeds", "2"]
    assert main([*argv, *TINY, "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "guide" not in line]
    assert [row.split(" | ")[:3] for row in rows] == [
        ["| delta", "svi", "-"],
        ["| delta", "otmdr", "0.05"],
        ["| normal", "svi", "-"],
        ["| normal", "otmdr", "0.005"],
    ]
    assert all(row.count("±") == 5 for row in rows)  # 4 metrics and the step time
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 8 and {r["seed"] for r in runs} == {0, 1}
    with open(out / "compare.csv") as f:
        assert len(list(csv.DictReader(f))) == 8
    assert "| normal | otmdr |" in capsys.readouterr().out


BAD_ARGUMENTS = [
    (["train", "--guide", "gaussian"], ["delta", "ensemble", "normal"]),
    (["train", "--method", "adam"], ["svi", "sam", "otmdr"]),
    (["train", "--optimizer", "rmsprop"], ["adam", "sgd"]),
    (["train", "--schedule", "step"], ["cosine", "constant"]),
    (["train", "--dataset", "mnist"], ["digits", "cifar10", "cifar100", "fakedata"]),
    (["train", "--rho", "-0.1"], ["--rho", "must be a number > 0"]),
    (["train", "--epochs", "zero"], ["expected an integer", "zero"]),
    (["train", "--hidden", "128,x"], ["positive ints"]),
    (["train", "--width", "8"], ["width applies to cnn, resnet10 and resnet18"]),
    (["compare", "--methods", "svi,adam"], ["adam", "'svi', 'sam', 'otmdr'"]),
    (["compare", "--guides", "normal,dirac"], ["dirac", "'delta', 'ensemble', 'normal'"]),
    (["evaluate", "/no/such/run"], ["not a run directory", "config.json"]),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_ARGUMENTS)
def test_bad_arguments_list_the_allowed_values(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: otmdr" in err
    assert all(text in err for text in expected), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_module_and_console_script_entry_points(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["otmdr", "train", "--help"])
    with pytest.raises(SystemExit) as info:  # python -m pyro_otmdr, in this process
        runpy.run_module("pyro_otmdr", run_name="__main__")
    assert info.value.code == 0 and "--guide {delta,ensemble,normal}" in capsys.readouterr().out
    (script,) = entry_points(group="console_scripts", name="otmdr")
    assert script.value == "pyro_otmdr.experiments.cli:main"


def test_train_resumes_an_interrupted_run_bit_for_bit(tmp_path, monkeypatch):
    flags = ["--guide", "normal", "--method", "otmdr", "--noise", "0.01", "--epochs", "2"]
    full = _train(tmp_path / "full", *flags)

    save = run_files.save_run_checkpoint

    def stop_after_first_epoch(path, experiment, epoch, step, history):
        save(path, experiment, epoch, step, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_run_checkpoint", stop_after_first_epoch)
    part = ["train", *TINY, "--out", str(tmp_path / "part"), "--quiet", *flags]
    assert main(part) == 130
    monkeypatch.undo()
    assert not (tmp_path / "part" / "metrics.json").exists()
    assert main(["train", "--resume", str(tmp_path / "part"), "--quiet", "--device", "cpu"]) == 0

    resumed = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert resumed["metrics"] == full["metrics"] and resumed["steps"] == full["steps"]
    runs = [tmp_path / "full", tmp_path / "part"]
    histories = [json.loads((run / "history.json").read_text()) for run in runs]
    assert [r["loss"] for r in histories[0]] == [r["loss"] for r in histories[1]]
    stores = [
        load_checkpoint(run / "checkpoint.pt", param_store=False, restore_rng=False).contents[
            "param_store"
        ]["params"]
        for run in runs
    ]
    assert stores[0].keys() == stores[1].keys()
    assert all(torch.equal(stores[0][name], stores[1][name]) for name in stores[0])


@pytest.mark.slow
def test_attack_writes_the_robustness_report_of_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    _train(out, "--guide", "normal", "--method", "svi")
    capsys.readouterr()
    argv = ["attack", str(out), "--threat", "w2-linf,linf", "--budget", "0.05,0.1"]
    assert main([*argv, "--steps", "3", "--num-samples", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "robustness.json").read_text())
    assert report["threats"] == ["w2-linf", "linf"] and report["budgets"] == [0.05, 0.1]
    assert report["settings"]["num_draws"] == 2 and report["epoch"] == 1
    assert set(report["robust_accuracy_fresh"]) == {"w2-linf", "linf"}
    for accuracies in report["robust_accuracy"].values():
        assert all(a <= report["clean_accuracy"] for a in accuracies)
    assert (out / "robustness.png").is_file()
    tree = az.from_netcdf(out / "tree.nc")
    assert {"posterior_predictive", "robustness"} <= set(tree.children)
    assert tree["robustness"].dataset["robust_accuracy"].shape == (2, 2)
    assert "| w2-linf |" in printed and "| linf |" in printed
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0


@pytest.mark.parametrize(
    "flags, expected",
    [(["--threat", "w1"], "invalid choice: w1"), (["--budget", "0.1,-1"], "number > 0")],
)
def test_attack_rejects_bad_threats_and_budgets(flags, expected, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["attack", str(tmp_path), *flags])
    assert expected in capsys.readouterr().err


def test_evaluate_under_shift_writes_json_figure_and_a_tree_group(tmp_path, capsys):
    out = tmp_path / "run"
    _train(out, "--guide", "delta", "--method", "svi")
    argv = ["evaluate", str(out), "--shift", "gaussian_noise,contrast", "--severity", "1,3"]
    assert main([*argv, "--device", "cpu"]) == 0
    saved = json.loads((out / "shift.json").read_text())
    assert set(saved["shifts"]) == {"gaussian_noise", "contrast"}
    assert set(saved["shifts"]["contrast"]) == {"0", "1", "3"}
    assert set(saved["mean_over_shifts"]) == {"accuracy", "nll", "ece"}
    assert (out / "shift.png").is_file()
    tree = az.from_netcdf(out / "tree.nc")
    assert tree["shift"].dataset["nll"].shape == (2, 3)
    assert "mean over shifts and severities" in capsys.readouterr().out
