"""``otmdr finetune`` end to end: the paper's chain (AT, then WDAT fine-tuning), evaluate and
attack on the new run, --overwrite, Ctrl-C, and the errors of the command line."""

import hashlib
import importlib
import json
from pathlib import Path

import pytest

import pyro_otmdr.experiments.cli.rundir as run_files
from pyro_otmdr.experiments.cli import main
from pyro_otmdr.experiments.cli.parser import build_parser
from pyro_otmdr.experiments.cli.rundir import clear_run
from tests.experiments.cli.test_parser import _imported_after, _run_main

TINY = ["--epochs", "1", "--hidden", "16", "--num-samples", "2", "--batch-size", "128"]
TINY += ["--device", "cpu", "--quiet"]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def at_run(tmp_path_factory) -> Path:
    """``otmdr train --data-robust at``: the robust run to fine-tune."""
    out = tmp_path_factory.mktemp("at") / "at"
    flags = ["--guide", "delta", "--method", "svi", "--data-robust", "at", "--eps", "0.05"]
    assert main(["train", *TINY, *flags, "--out", str(out)]) == 0
    return out


def test_the_chain_at_then_wdat_and_the_new_run_evaluates_and_attacks(at_run, tmp_path, capsys):
    new, before = tmp_path / "at-wdat", _hashes(at_run)
    flags = ["--data-robust", "wdat", "--delta", "0.05", "--reinit-last", "--weight-noise", "0.01"]
    assert main(["finetune", str(at_run), *flags, "--epochs", "1", "--out", str(new)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"fine-tuning {at_run}" in printed and "net.2.weight net.2.bias re-initialised" in printed
    )
    assert f"run directory: {new}" in printed and "accuracy" in printed
    assert _hashes(at_run) == before  # the parent, byte for byte
    config = json.loads((new / "config.json").read_text())
    assert (config["data_robust"], config["delta"], config["eps"]) == ("wdat", 0.05, 0.05)
    record = json.loads((new / "parent.json").read_text())
    assert record["run_dir"] == str(at_run.resolve())
    assert record["checkpoint_sha256"] == before["checkpoint.pt"]
    assert (record["reinit_last"], record["weight_noise"]) == (True, 0.01)

    metrics = json.loads((new / "metrics.json").read_text())["metrics"]
    assert main(["evaluate", str(new), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((new / "evaluation-test.json").read_text())["metrics"] == metrics
    attack = ["--threat", "linf", "--budget", "0.05", "--steps", "2", "--quiet"]
    assert main(["attack", str(new), *attack, "--device", "cpu"]) == 0
    assert (new / "robustness.json").is_file()
    assert json.loads((new / "parent.json").read_text()) == record
    assert _hashes(at_run) == before

    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # a run there already
        main(["finetune", str(at_run), "--out", str(new), "--epochs", "1"])
    assert stopped.value.code == 2 and "holds a run already" in capsys.readouterr().err
    replace = ["--out", str(new), "--overwrite", "--data-robust", "none", *TINY]
    assert main(["finetune", str(at_run), *replace]) == 0
    assert not (new / "robustness.json").exists()  # the replaced run's outputs are gone
    assert json.loads((new / "parent.json").read_text())["reinit_last"] is False
    assert "parent.json" in [p.name for p in clear_run(new)]  # train --overwrite removes it


def test_only_the_flags_given_override_the_parent():
    args = build_parser().parse_args(["finetune", "runs/at", "--out", "x", "--epochs", "5"])
    assert args.command == "finetune" and args.epochs == 5 and args.weight_noise == 0.0
    assert not {"lr", "guide", "hidden", "device", "download"} & set(vars(args))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weight-noise", "-1"], "argument --weight-noise: must be a number >= 0"),
        (["--weight-noise", "x"], "argument --weight-noise: expected a number"),
        (["--guide", "gaussian"], "argument --guide: invalid choice"),
    ],
)
def test_a_bad_flag_is_an_argparse_error(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        main(["finetune", "runs/at", "--out", "runs/new", *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_help_imports_none_of_torch_pyro_arviz():
    assert _imported_after(_run_main(["finetune", "--help"])) == []


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--out", "PARENT", "--overwrite"], 2, "is the parent run directory"),
        (["--out", "NEW", "--hidden", "32"], 2, "would change the model"),
        (["--out", "NEW", "--seed", "1"], 2, "would change the data split"),
        (["--out", "NEW", "--lr", "0"], 2, "argument --lr: must be a number > 0"),
        (["--out", "NEW", "--device", "cuda"], 2, "CUDA is not available"),
    ],
)
def test_a_bad_input_exits_with_a_message_and_writes_nothing(
    at_run, tmp_path, capsys, argv, status, message
):
    if "--device" in argv and importlib.import_module("torch").cuda.is_available():
        pytest.skip("CUDA is available here")
    places = {"PARENT": str(at_run), "NEW": str(tmp_path / "new")}
    argv = [places.get(arg, arg) for arg in argv]
    before = _hashes(at_run)
    try:
        code = main(["finetune", str(at_run), *argv])
    except SystemExit as stopped:
        code = stopped.code
    assert code == status and message in capsys.readouterr().err
    assert _hashes(at_run) == before and not (tmp_path / "new").exists()


def test_a_missing_or_unfinished_run_dir_says_what_to_do(at_run, tmp_path, capsys):
    new = str(tmp_path / "new")
    with pytest.raises(SystemExit) as stopped:
        main(["finetune", str(tmp_path / "missing"), "--out", new])
    assert stopped.value.code == 2 and "there is no run directory" in capsys.readouterr().err
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text((at_run / "config.json").read_text())
    assert main(["finetune", str(half), "--out", new]) == 1  # no checkpoint: never finished
    assert "has no checkpoint.pt" in capsys.readouterr().err and not Path(new).exists()


def test_ctrl_c_says_how_to_resume(at_run, tmp_path, capsys, monkeypatch):
    save = run_files.save_run_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_run_checkpoint", save_then_stop)
    new = tmp_path / "new"
    argv = ["finetune", str(at_run), "--out", str(new), "--epochs", "2", "--data-robust", "none"]
    assert main([*argv, "--quiet"]) == 130
    assert f"otmdr train --resume {new}" in capsys.readouterr().err
    assert (new / "checkpoint.pt").is_file() and not (new / "metrics.json").exists()
