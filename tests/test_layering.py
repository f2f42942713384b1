"""The package's layers point down only: the architecture, as a test.

Bottom to top (docs/architecture.md)::

    experiments    the tooling: experiment configurations, the otmdr command
        |
    workflow       the library pieces users import: data sets, model zoo, epoch loop,
        |          checkpoints, atomic outputs
    evaluation     metrics, posterior predictive, ArviZ export, plots
        |
    data_space     Wasserstein and pointwise attacks, the data-robust training losses
        |
    model_space    OT-MDR / SAM: tensor core, step engine, Pyro ELBO and torch optimiser fronts
        |
    bayes          the Pyro layer: bayesian(), the ensemble guide, posterior draws replayed

A module may import its own layer and the layers below it. Nothing inside a layer imports the
package root or its top-level modules (``pyro_otmdr.attacks``, the deprecated aliases
``pyro_otmdr.bayesian``, ...): they sit above every layer. Nothing at all inside the package
imports a deprecated alias (a module that calls ``moved(__name__, ...)``, such as
``pyro_otmdr.experiments.data``). The step engine's pure core does not import Pyro at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_otmdr"
LAYERS = ["bayes", "model_space", "data_space", "evaluation", "workflow", "experiments"]
HELPERS = {"_deprecated", "_lazy"}  # modules at the root that layers may use: not re-exports
DEPRECATION_MARK = "moved(__name__,"
PYRO_FREE = {
    "model_space." + m
    for m in (
        "core",
        "batching",
        "perturbation",
        "running_stats",
        "savings",
        "center_gradient",
        "step",
    )
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``pyro_otmdr/model_space/step.py`` -> ``model_space.step`` (``__init__`` -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, name: str, is_package: bool) -> set[str]:
    """Every module an AST imports, absolute, with the ``pyro_otmdr.`` prefix kept."""
    here = ["pyro_otmdr", *name.split(".")] if name else ["pyro_otmdr"]
    if not is_package:
        here = here[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def violations(root: Path = PACKAGE, layers: list[str] = LAYERS) -> list[str]:
    """One line per import that breaks the layering, empty when the package is clean."""
    problems: set[str] = set()
    deprecated = deprecated_aliases(root)
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        targets = imported_modules(path.read_text(), name, path.name == "__init__.py")
        problems.update(
            f"{name} imports the deprecated alias {target}: import its new home"
            for target in targets
            if target.removeprefix("pyro_otmdr.") in deprecated
        )
        if path.parent == root:
            continue  # the package root and its top-level modules stand above every layer
        layer = name.split(".")[0]
        if layer not in layers:
            problems.add(f"{name}: subpackage {layer!r} is not placed in LAYERS")
            continue
        for target in targets:
            problems.update(_check(name, layers.index(layer), target, layers, root))
    return sorted(problems)


def deprecated_aliases(root: Path = PACKAGE) -> set[str]:
    """The modules that only alias a new home for one release (``moved(__name__, ...)``)."""
    found = {module_name(p, root) for p in root.rglob("*.py") if DEPRECATION_MARK in p.read_text()}
    return found - HELPERS


def _check(name: str, rank: int, target: str, layers: list[str], root: Path) -> set[str]:
    """What is wrong with module ``name`` (of layer ``rank``) importing ``target``."""
    parts = target.split(".")
    if name in PYRO_FREE and parts[0] == "pyro":
        return {f"{name} imports pyro: the step engine's core is Pyro-agnostic"}
    if parts[0] != "pyro_otmdr":
        return set()
    if len(parts) == 1:
        return {f"{name} imports the package root pyro_otmdr: import from a layer instead"}
    head = parts[1]
    if head in layers and layers.index(head) > rank:
        return {f"{name} imports pyro_otmdr.{head}: {head!r} is above {layers[rank]!r}"}
    if head not in layers and head not in HELPERS and (root / f"{head}.py").exists():
        return {f"{name} imports the re-export module pyro_otmdr.{head}: import from its layer"}
    return set()  # same or lower layer, or a name from the root (reported with the root)


def test_layers_only_point_down():
    assert violations() == []


def test_every_layer_that_exists_is_a_package_in_order():
    existing = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    assert set(existing) == set(LAYERS)


def test_the_deprecated_aliases_are_the_old_paths():
    assert deprecated_aliases() == {
        *("bayesian", "data", "models", "metrics", "checkpoint", "optim", "training"),
        "distributed",
        *(f"experiments.{m}" for m in ("data", "models", "training", "checkpoint", "outputs")),
    }


def test_nothing_outside_the_package_imports_a_deprecated_alias():
    top = PACKAGE.parent
    users = [p for d in ("tests", "examples", "benchmarks") for p in (top / d).rglob("*.py")]
    deprecated = {f"pyro_otmdr.{name}" for name in deprecated_aliases()}
    found = []
    for path in users:
        if path.name in ("test_public_api.py", "test_layering.py"):
            continue  # these two name the old paths on purpose
        name = str(path.relative_to(top).with_suffix("")).replace("/", ".")
        found += [
            f"{path}: {t}"
            for t in imported_modules(path.read_text(), name, False)
            if t in deprecated
        ]
    assert found == []


UPWARD = {
    "relative import of a higher layer": (
        "model_space/bad.py",
        "from ..evaluation import evaluate",
    ),
    "absolute import of a higher layer": ("bayes/bad.py", "import pyro_otmdr.experiments.cli"),
    "import inside a function": ("evaluation/bad.py", "def f():\n    from ..experiments import x"),
    "the package root": ("evaluation/bad.py", "from pyro_otmdr import OTMDR"),
    "a re-export module": ("evaluation/bad.py", "from pyro_otmdr.data import load_dataset"),
    "a deprecated alias": ("experiments/bad.py", "from .old import thing"),
    "pyro in the pure core": ("model_space/core.py", "import pyro"),
    "an unplaced subpackage": ("newpart/__init__.py", ""),
}


@pytest.mark.parametrize("case", UPWARD, ids=list(UPWARD))
def test_an_upward_import_is_reported(case, tmp_path):
    root = tmp_path / "pyro_otmdr"
    for layer in ("bayes", "model_space", "evaluation", "experiments"):
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "data.py").write_text("")
    (root / "experiments" / "old.py").write_text('moved(__name__, "pyro_otmdr.bayes")\n')
    relative, source = UPWARD[case]
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_text(source + "\n")
    assert len(violations(root)) == 1, violations(root)


def test_a_downward_import_is_allowed(tmp_path):
    root = tmp_path / "pyro_otmdr"
    for layer in ("bayes", "evaluation"):
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text("")
    (root / "evaluation" / "ok.py").write_text(
        "from ..bayes import replay\nfrom . import metrics\n"
    )
    assert violations(root) == []
