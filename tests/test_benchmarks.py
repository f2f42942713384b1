"""The step-time benchmark runs every engine variant, each switching savings off through
:class:`~pyro_otmdr.model_space.StepSavings` (a saving renamed in the package fails it), and
its compiled losses next to the eager ones (``--jit``)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_time_engine_each_prints_what_each_saving_buys():
    command = [
        sys.executable, "benchmarks/step_time.py", "--models", "mlp", "--guides", "normal",
        "--hidden", "8", "--layers", "1", "--batch", "8", "--rounds", "1", "--steps", "1",
        "--threads", "1", "--engine", "each",
    ]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    labels = [line.split()[2] for line in out.splitlines() if line.startswith("mlp")]
    variants = ["before", "-logq", "-frozen", "-served", "-device", "new"]
    ratios = ["n/b", "n/-logq", "n/-frozen", "n/-served", "n/-device"]
    assert labels == variants + ratios


def test_step_time_jit_prints_compiled_next_to_eager():
    command = [
        sys.executable, "benchmarks/step_time.py", "--models", "mlp", "--guides", "normal",
        "--hidden", "8", "--layers", "1", "--batch", "8", "--rounds", "1", "--steps", "1",
        "--threads", "1", "--jit",
    ]  # fmt: skip
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("mlp")]
    assert [row[2] for row in rows] == ["eager", "jit", "j/e"]
    assert len(rows[2]) == 3 + 5  # a compiled / eager ratio for svi, sam, k1, k2 and k1 whole
