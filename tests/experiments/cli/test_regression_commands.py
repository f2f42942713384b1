"""``otmdr`` on a regression data set: train writes a run directory with regression metrics,
evaluate reproduces them, and attack, shift, OOD and compare say why they do not apply."""

import json

import arviz as az
import pytest

from pyro_otmdr.experiments.cli import main

TINY = ["--epochs", "2", "--hidden", "16", "--num-samples", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("diabetes") / "run"
    assert main(["train", "--dataset", "diabetes", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_a_regression_run_directory(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    values = metrics["metrics"]
    assert {"rmse", "nll", "crps", "coverage_50", "coverage_90", "coverage_95"} <= set(values)
    assert {"interval_width_90", "calibration_error", "mae"} <= set(values)
    assert "accuracy" not in values and 0 < values["rmse"] < 1.5
    assert 70 < metrics["target_std"] < 85  # the targets' original units
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and "val_rmse" in history[0]
    for name in ("calibration.png", "calibration_pit.png", "tree.nc", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    tree = az.from_netcdf(run_dir / "tree.nc")
    assert tree["observed_data"]["obs"].dtype == "float64"
    assert set(tree["posterior"].data_vars) == {"rmse", "nll"}


def test_evaluate_reproduces_a_regression_run(run_dir, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--device", "cpu"]) == 0
    again = json.loads((run_dir / "evaluation-test.json").read_text())
    assert again["metrics"] == json.loads((run_dir / "metrics.json").read_text())["metrics"]
    out = capsys.readouterr().out
    assert "crps" in out and "original units" in out
    assert (run_dir / "calibration-test_pit.png").is_file()
    assert main(["evaluate", str(run_dir), "--split", "val", "--device", "cpu"]) == 0


def test_attack_ood_and_shift_refuse_a_regression_run(run_dir, capsys):
    capsys.readouterr()
    assert main(["attack", str(run_dir), "--device", "cpu"]) == 1
    assert "attacks are for classifiers" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--ood", "fakedata", "--device", "cpu"]) == 1
    assert "regression data set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(run_dir), "--shift", "rotation", "--device", "cpu"])
    assert stop.value.code == 2 and "--shift" in capsys.readouterr().err


def test_compare_and_other_models_are_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--dataset", "diabetes", "--out", str(tmp_path / "cmp")])
    assert "classification metrics" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "diabetes", "--model", "cnn", "--out", str(tmp_path / "r")])
    assert "use model 'mlp'" in capsys.readouterr().err and not (tmp_path / "r").exists()
