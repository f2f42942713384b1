"""Ctrl-C during ``otmdr train``: the resume command, status 130, and a resume bit for bit."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyro_otmdr.experiments.cli import main

ROOT = Path(__file__).resolve().parents[3]
FLAGS = ["--guide", "delta", "--method", "sam", "--epochs", "40", "--hidden", "16"]
FLAGS += ["--device", "cpu", "--quiet"]


def _default_sigint() -> None:
    """Let the child take Ctrl-C even when the tests run as a background job, whose shell hands
    its children SIGINT ignored (then Python would install no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_after_first_checkpoint(out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pyro_otmdr", "train", *FLAGS, "--out", str(out)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 180
    while not (out / "checkpoint.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 3 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(
        command, process.returncode, stdout.decode(), stderr.decode()
    )


def test_ctrl_c_says_how_to_resume_and_the_run_resumes_bit_for_bit(tmp_path):
    part = tmp_path / "part"
    stopped = _interrupt_after_first_checkpoint(part)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert f"otmdr train --resume {part}" in stopped.stderr
    assert "the last checkpoint is" in stopped.stderr and not (part / "metrics.json").exists()

    assert main(["train", "--resume", str(part), "--quiet", "--device", "cpu"]) == 0
    assert main(["train", *FLAGS, "--out", str(tmp_path / "full")]) == 0
    resumed, full = (
        json.loads((d / "metrics.json").read_text()) for d in (part, tmp_path / "full")
    )
    assert resumed["metrics"] == full["metrics"] and resumed["steps"] == full["steps"]
