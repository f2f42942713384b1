"""``otmdr train|compare --data-robust``: a run, a resume, the robust columns, bad flags."""

import csv
import json

import pytest
import torch

import pyro_otmdr.experiments.cli.compare as compare_command
import pyro_otmdr.experiments.cli.rundir as run_files
import pyro_otmdr.workflow.checkpoint as checkpoint_module
from pyro_otmdr.evaluation import RobustnessReport
from pyro_otmdr.experiments.cli import main
from pyro_otmdr.experiments.config import ExperimentConfig
from pyro_otmdr.workflow.checkpoint import load_checkpoint

TINY = ["--epochs", "1", "--hidden", "16", "--num-samples", "2", "--device", "cpu"]


def test_train_with_trades_writes_its_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--guide", "delta", "--method", "otmdr", "--data-robust", "trades"]
    assert main([*argv, "--eps", "0.05", "--beta", "3", "--quiet", "--out", str(out)]) == 0
    assert "data-robust trades eps=0.05 beta=3" in capsys.readouterr().out
    config = ExperimentConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert (config.data_robust, config.eps, config.beta, config.method) == (
        "trades",
        0.05,
        3.0,
        "otmdr",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["metrics"]["accuracy"] <= 1 and metrics["step_ms"] > 0
    checkpoint = load_checkpoint(out / "checkpoint.pt", param_store=False, restore_rng=False)
    assert "objective_state" not in checkpoint.extra  # TRADES keeps no running state


def test_train_with_wdat_resumes_its_running_estimate(tmp_path, monkeypatch):
    flags = [*TINY, "--epochs", "2", "--guide", "delta", "--method", "svi", "--quiet"]
    flags += ["--data-robust", "wdat", "--delta", "0.05"]
    assert main(["train", *flags, "--out", str(tmp_path / "full")]) == 0

    save = run_files.save_run_checkpoint

    def stop_after_first_epoch(path, experiment, epoch, step, history):
        save(path, experiment, epoch, step, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_run_checkpoint", stop_after_first_epoch)
    assert main(["train", *flags, "--out", str(tmp_path / "part")]) == 130
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "part" / "checkpoint.pt", param_store=False)
    first = saved.contents["loss"]["upsilon_sq"]  # the WDAT loss's own state
    assert isinstance(first, torch.Tensor) and first > 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--quiet", "--device", "cpu"]) == 0

    runs = [tmp_path / "full", tmp_path / "part"]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    assert metrics[0]["metrics"] == metrics[1]["metrics"]
    states = [
        load_checkpoint(run / "checkpoint.pt", param_store=False, restore_rng=False).contents[
            "loss"
        ]["upsilon_sq"]
        for run in runs
    ]
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], first)


@pytest.mark.parametrize("method", ["svi", "otmdr"])
def test_a_run_saved_with_the_objective_state_apart_still_resumes(tmp_path, monkeypatch, method):
    """Checkpoints of earlier versions kept WDAT's estimate in ``extra["objective_state"]`` and
    the loss state without it (none for SVI, OT-MDR's generators alone)."""
    flags = [*TINY, "--epochs", "2", "--guide", "delta", "--method", method, "--quiet"]
    flags += ["--data-robust", "wdat", "--delta", "0.05"]
    assert main(["train", *flags, "--out", str(tmp_path / "full")]) == 0
    save = run_files.save_run_checkpoint

    def save_as_before(path, experiment, epoch, step, history):
        save(path, experiment, epoch, step, history)
        contents = load_checkpoint(path, param_store=False, restore_rng=False).contents
        nested = contents["loss"]
        objective = nested.pop("elbo") if method == "otmdr" else nested
        contents["loss"] = nested if method == "otmdr" else None
        contents["extra"]["objective_state"] = objective
        checkpoint_module._atomic_save(contents, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_run_checkpoint", save_as_before)
    assert main(["train", *flags, "--out", str(tmp_path / "part")]) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "part"), "--quiet", "--device", "cpu"]) == 0
    metrics = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("full", "part")]
    assert metrics[0]["metrics"] == metrics[1]["metrics"]


def test_compare_over_data_robust_losses_adds_the_robust_columns(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--guides", "delta", "--methods", "svi", "--seeds", "1"]
    argv += ["--data-robust", "none,at", "--attack-steps", "5", *TINY, "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("(trained)") == 2 and "rob linf" in printed
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "delta-svi-at-rho--seed0.json",
        "delta-svi-rho--seed0.json",
    ]
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["data_robust"] for row in rows] == ["none", "at"]
    for row in rows:
        assert float(row["robust_budget"]) == 0.1 and row["attack_steps"] == "5"
        for key in ("robust_w2_linf", "robust_linf"):
            assert 0 <= float(row[key]) <= float(row["accuracy"])
        assert float(row["step_s"]) > 0 and float(row["attack_seconds"]) > 0
        assert row["robust_fresh_draws"] == "False"  # a point estimate: deterministic
        assert row["attack_samples"] == "2"  # --num-samples, by default
    results = (out / "results.md").read_text()
    assert "| guide | method | data-robust | rho |" in results and "linf (0.1) |" in results
    assert "| delta | svi | at | - |" in results and "5 steps each" in results

    assert main(argv) == 0  # everything is kept
    assert capsys.readouterr().out.count("(kept from an earlier run)") == 2
    plain = [a for a in argv if a not in ("--data-robust", "none,at")]  # none only: no attacks
    assert main(plain) == 0
    assert capsys.readouterr().out.count("(kept from an earlier run)") == 1
    with open(out / "compare.csv") as f:
        (row,) = csv.DictReader(f)
    assert "robust_linf" not in row and row["data_robust"] == "none"


def test_compare_keeps_the_run_files_of_earlier_versions(tmp_path, capsys):
    """A run file written before the data-robust losses (no such fields) still resumes."""
    out = tmp_path / "cmp"
    argv = ["compare", "--guides", "delta", "--methods", "svi", "--seeds", "1", *TINY]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    path = out / "runs" / "delta-svi-rho--seed0.json"
    saved = json.loads(path.read_text())
    for name in ("data_robust", "eps", "delta", "beta", "budget"):
        del saved["config"][name]
    del saved["row"]["data_robust"]
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(argv) == 0
    assert "(kept from an earlier run)" in capsys.readouterr().out
    assert "robust_linf" not in json.loads((out / "runs.json").read_text())[0]
    # asking for the robust columns measures them: the kept row lacks them
    assert main([*argv, "--robust-budget", "0.05", "--attack-steps", "2"]) == 0
    assert "(trained)" in capsys.readouterr().out
    (row,) = json.loads((out / "runs.json").read_text())
    assert row["robust_budget"] == 0.05 and row["data_robust"] == "none"


def test_a_sampled_guides_robust_columns_are_the_fresh_draw_numbers(tmp_path, monkeypatch):
    seen = {}

    def attack(experiment, split, **options):
        seen.update(options, split=split)
        frozen = {"w2-linf": [0.1], "linf": [0.2]}
        fresh = {"w2-linf": [0.3], "linf": [0.4]}
        return RobustnessReport(
            threats=["w2-linf", "linf"],
            budgets=list(options["budgets"]),
            clean_accuracy=0.9,
            robust_accuracy=frozen,
            distance=frozen,
            max_loss=frozen,
            upsilon={"w2-linf": 1.0, "linf": 1.0},
            robust_accuracy_fresh=fresh,
            clean_accuracy_fresh=0.9,
        )

    monkeypatch.setattr(compare_command, "attack_experiment", attack)
    argv = ["compare", "--guides", "normal", "--methods", "svi", "--seeds", "1", *TINY]
    argv += ["--robust-budget", "0.05", "--attack-samples", "3", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "cmp")]) == 0
    assert seen["split"] == "test" and seen["budgets"] == (0.05,)
    assert seen["threats"] == ("w2-linf", "linf") and seen["num_samples"] == 3
    assert seen["steps"] == 50  # the default --attack-steps
    (row,) = json.loads((tmp_path / "cmp" / "runs.json").read_text())
    assert (row["robust_w2_linf"], row["robust_linf"]) == (0.3, 0.4)
    assert row["robust_fresh_draws"] is True and row["attack_samples"] == 3
    results = (tmp_path / "cmp" / "results.md").read_text()
    assert "attacked through 3 draws, re-evaluated with fresh draws" in results


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--data-robust", "fgsm"], ["invalid choice", "none", "armor"]),
        (["train", "--eps", "1.5"], ["--eps", "must be a number in (0, 1]"]),
        (["train", "--delta", "0"], ["--delta", "must be a number in (0, 1]"]),
        (["train", "--beta", "-1"], ["--beta", "must be a number >= 0"]),
        (["train", "--budget", "0"], ["--budget", "must be a number > 0"]),
        (["compare", "--data-robust", "none,pgd"], ["invalid choice: pgd", "'trades'"]),
        (["compare", "--robust-budget", "2"], ["--robust-budget", "must be in (0, 1]"]),
        (["compare", "--attack-steps", "0"], ["--attack-steps", "must be > 0"]),
        (["compare", "--attack-samples", "x"], ["--attack-samples", "expected an integer"]),
    ],
)
def test_bad_data_robust_flags_are_usage_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: otmdr" in err and all(text in err for text in expected), err


def test_help_lists_the_data_robust_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--data-robust {none,at,trades,wdat,armor}" in text
    assert all(flag in text for flag in ("--eps", "--delta", "--beta", "--budget"))
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    flags = ("--data-robust", "--robust-budget", "--attack-steps", "--attack-samples")
    assert all(flag in text for flag in flags)
