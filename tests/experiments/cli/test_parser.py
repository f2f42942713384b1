"""The parser answers without importing the heavy libraries; the package root loads lazily."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "pyro", "arviz", "torchvision", "matplotlib", "xarray", "sklearn")


def _imported_after(code: str) -> list[str]:
    """The heavy top-level packages in ``sys.modules`` after ``code`` ran in a fresh Python."""
    loaded = "{m.split('.')[0] for m in sys.modules}"
    probe = f"import sys\n{code}\nprint(sorted({loaded} & {set(HEAVY)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["compare", "--help"]])
def test_help_imports_none_of_torch_pyro_arviz(argv):
    assert _imported_after(_run_main(argv)) == []


def test_a_bad_flag_is_refused_before_any_heavy_import():
    assert _imported_after(_run_main(["train", "--guide", "x"])) == []


def _run_main(argv: list[str]) -> str:
    return (
        "from pyro_otmdr.experiments.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )


def test_the_package_root_loads_its_names_on_first_use():
    assert _imported_after("import pyro_otmdr") == []
    assert "torch" in _imported_after("import pyro_otmdr\npyro_otmdr.OTMDR")


def test_lazy_names_are_listed_and_resolve():
    import pyro_otmdr
    import pyro_otmdr.experiments as experiments
    from pyro_otmdr.experiments import config, runs

    assert set(pyro_otmdr.__all__) == set(pyro_otmdr._HOMES) <= set(dir(pyro_otmdr))
    assert set(experiments._HOMES) <= set(experiments.__all__) <= set(dir(experiments))
    assert experiments.ExperimentConfig is config.ExperimentConfig
    assert experiments.train_experiment is runs.train_experiment
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pyro_otmdr.nothing  # noqa: B018


def test_the_evaluation_layer_loads_lazily_and_keeps_its_function_names():
    assert _imported_after("import pyro_otmdr.evaluation.threats") == []
    probe = (
        "import pyro_otmdr.evaluation.robustness\n"
        "from pyro_otmdr.evaluation import robustness\n"
        "assert callable(robustness) and robustness.__name__ == 'robustness'"
    )
    assert "torch" in _imported_after(probe)
