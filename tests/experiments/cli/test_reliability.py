"""The reliability promise of ``otmdr``, tried as a careless or hostile user would.

SIGKILL at random moments then ``--resume`` equals the uninterrupted run; an edited
``config.json`` is refused; ``--out`` never replaces a run silently; two processes never write
one run; a full or read-only disk keeps the previous files and says so in one error line.
"""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyro_otmdr.experiments.cli.rundir as run_files
import pyro_otmdr.experiments.experiment as experiment_module
from pyro_otmdr.experiments.cli import main
from tests.workflow.test_outputs import fill, small_disk

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--hidden", "16", "--num-samples", "4", "--device", "cpu", "--quiet"]
TIMING = ("step_ms", "seconds")


def _train(out: Path, *flags: str) -> int:
    return main(["train", *TINY, "--out", str(out), *flags])


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def _results(run: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    return metrics, _untimed(json.loads((run / "history.json").read_text()))


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != ".lock"}


def _spawn(*argv: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pyro_otmdr", *argv]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path):
    flags = ["--guide", "normal", "--method", "otmdr", "--epochs", "4", "--noise", "0.01"]
    start = time.monotonic()
    assert _train(tmp_path / "full", *flags) == 0
    duration = time.monotonic() - start
    full = _results(tmp_path / "full")
    draws = random.Random(0)
    for attempt in range(3):
        run = tmp_path / f"killed{attempt}"
        process = _spawn("train", *TINY, *flags, "--out", str(run))
        time.sleep(draws.uniform(2.0, 4.0 + duration))  # the child's imports take seconds
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        if (run / "checkpoint.pt").exists():
            assert main(["train", "--resume", str(run), "--quiet", "--device", "cpu"]) == 0
        else:  # killed before the first checkpoint: start again over what it left
            assert _train(run, *flags, "--overwrite") == 0
        assert _results(run) == full  # metrics, and the whole history with learning rates
        assert not list(run.glob(".*.tmp*"))


def test_an_interrupted_run_logs_the_scheduled_rate_of_every_resumed_epoch(tmp_path, monkeypatch):
    flags = ["--guide", "delta", "--method", "sam", "--epochs", "3"]
    assert _train(tmp_path / "full", *flags) == 0
    save = run_files.save_run_checkpoint

    def stop_after_first_epoch(path, experiment, epoch, step, history):
        save(path, experiment, epoch, step, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_run_checkpoint", stop_after_first_epoch)
    assert _train(tmp_path / "part", *flags) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "part"), *TINY]) == 0
    full, part = _results(tmp_path / "full"), _results(tmp_path / "part")
    assert part == full
    rates = [record["lr"] for record in part[1]]
    assert rates[0] == 1e-2 and rates[0] > rates[1] > rates[2] > 0  # cosine, not config.lr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run to copy from."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert _train(run, "--guide", "delta", "--method", "sam", "--epochs", "1") == 0
    return run


def _copy(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name, data in _files(run).items():
        (to / name).write_bytes(data)
    return to


@pytest.mark.parametrize(
    ("key", "value"), [("guide", "normal"), ("seed", 3), ("hidden", [32]), ("lr", 0.5)]
)
def test_a_config_that_does_not_match_the_checkpoint_is_refused(
    trained, tmp_path, capsys, key, value
):
    run = _copy(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config[key] = value
    (run / "config.json").write_text(json.dumps(config))
    for argv in (["evaluate", str(run)], ["attack", str(run)], ["train", "--resume", str(run)]):
        capsys.readouterr()
        assert main([*argv, "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert "does not match the configuration checkpoint.pt was trained with" in err
        assert f"{key}: {value!r} there" in err and "Traceback" not in err


def test_settings_of_where_a_run_executes_may_change(trained, tmp_path):
    run = _copy(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config.update(num_workers=0, data_dir="/elsewhere", device="cuda")
    (run / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(run), "--device", "cpu", "--quiet"]) == 0


def test_out_refuses_to_replace_a_run_and_overwrite_removes_its_files(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path / "run")
    (run / "robustness.json").write_text("{}")  # a stale attack output
    (run / "notes.txt").write_text("mine")  # not a run file: kept
    with pytest.raises(SystemExit) as info:
        _train(run, "--epochs", "1")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "holds a run already" in err
    assert f"otmdr train --resume {run}" in err and "--overwrite" in err
    assert _files(run) == _files(trained) | {"robustness.json": b"{}", "notes.txt": b"mine"}
    assert _train(run, "--epochs", "1", "--guide", "delta", "--overwrite") == 0
    assert not (run / "robustness.json").exists() and (run / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("out", "expected"),
    [("", "empty path"), ("/", "root directory"), ("FILE", "is not a directory")],
)
def test_out_that_is_empty_root_or_a_file_is_refused(tmp_path, capsys, monkeypatch, out, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file")
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", out])
    assert info.value.code == 2 and expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_two_processes_never_write_one_run_and_a_killed_ones_lock_is_free(tmp_path):
    run = tmp_path / "run"
    first = _spawn("train", *TINY, "--epochs", "200", "--out", str(run))
    deadline = time.monotonic() + 120
    while not (run / "config.json").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "pyro_otmdr", "train", *TINY, "--out", str(run), "--overwrite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"in use by another otmdr process (pid {first.pid}, otmdr train)" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert (run / ".lock").exists()  # left behind by the killed process, and free
    assert _train(run, "--epochs", "1", "--overwrite") == 0


def test_expected_failures_are_error_lines_and_debug_shows_the_traceback(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": "5"}))
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert "configuration key 'epochs' must be int, got '5'" in err and "Traceback" not in err
    assert main(["evaluate", str(run), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err

    run = _copy(trained, tmp_path / "envelope")
    torch.save({"format": "pyro_otmdr.checkpoint", "version": 1}, run / "checkpoint.pt")
    assert main(["evaluate", str(run)]) == 1
    assert "its envelope holds no payload" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        main(["train", "--seed", "-1"])
    assert info.value.code == 2 and "must be an integer >= 0" in capsys.readouterr().err


def test_a_damaged_tree_stops_attack_before_any_attack_runs(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path / "run")
    tree = bytearray((run / "tree.nc").read_bytes())
    tree[len(tree) // 2] ^= 0x01
    (run / "tree.nc").write_bytes(bytes(tree))
    start = time.monotonic()
    assert main(["attack", str(run), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "tree.nc does not match its checksum" in err and "Traceback" not in err
    assert time.monotonic() - start < 10 and not (run / "robustness.json").exists()


def test_a_full_disk_keeps_the_previous_files_and_says_so(trained, tmp_path, capsys):
    with small_disk(tmp_path / "disk", size="1m") as disk:
        flags = ["--guide", "delta", "--method", "sam", "--epochs", "2"]
        assert _train(disk / "run", *flags) == 0
        run = disk / "run"
        before = _files(run)
        filler = fill(disk)
        capsys.readouterr()
        commands = {
            "history.json; the previous history.json is kept": ["train", "--resume", str(run)],
            "evaluation-test.json; nothing was written": ["evaluate", str(run)],
            "robustness.json; nothing was written": [
                *("attack", str(run), "--threat", "linf", "--budget", "0.1", "--steps", "2"),
            ],
        }
        for message, argv in commands.items():
            assert main([*argv, "--device", "cpu", "--quiet"]) == 1
            err = capsys.readouterr().err
            assert f"error: no space left on device while writing {message}" in err, err
            assert "Traceback" not in err and _files(run) == before
        filler.unlink()


def test_a_read_only_run_directory_fails_at_once(trained, tmp_path, capsys):
    with small_disk(tmp_path / "disk") as disk:
        run = _copy(trained, disk / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for argv in (["train", "--resume", str(run)], ["evaluate", str(run)]):
            start = time.monotonic()
            assert main([*argv, "--device", "cpu", "--quiet"]) == 1
            err = capsys.readouterr().err
            assert f"cannot write to {run}: Read-only file system" in err
            assert time.monotonic() - start < 5  # before any work


@pytest.mark.parametrize("method", ["svi", "otmdr"])
def test_skip_nonfinite_skips_a_nan_batch_and_counts_it(tmp_path, capsys, monkeypatch, method):
    batches = experiment_module.Experiment.train_batches

    def one_nan_batch(self, epoch):
        for index, (x, y) in enumerate(batches(self, epoch)):
            yield (torch.full_like(x, torch.nan) if (epoch, index) == (0, 2) else x), y

    monkeypatch.setattr(experiment_module.Experiment, "train_batches", one_nan_batch)
    flags = ["--guide", "delta", "--method", method, "--epochs", "2"]
    assert _train(tmp_path / "stops", *flags) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nan" in err.lower() and "Traceback" not in err
    assert _train(tmp_path / "skips", *flags, "--skip-nonfinite") == 0
    metrics, history = _results(tmp_path / "skips")
    assert [record["skipped"] for record in history] == [1, 0]
    assert metrics["accuracy"] > 0.5  # no NaN reached the parameters
