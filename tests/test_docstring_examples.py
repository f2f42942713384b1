"""Every ``Usage::`` block of the package's docstrings runs as written.

The collector walks ``pyro_otmdr`` (the deprecated alias modules, which call ``moved(...)``,
excepted), takes the ``Usage::`` literal blocks of each module's docstring and of every public
function, class, method and property defined in that module, and runs each block on its own: a
fresh namespace, a temporary working directory, a clean param store and a fixed seed. A block
passes if it does not raise (its ``assert`` lines give it teeth) and leaves the process's global
settings as it found them. Literal blocks of other kinds (``Command line::``, a plain ``::``) are
documentation only and never run.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Iterator

import pyro
import pytest
import torch

import pyro_otmdr

#: A ``Usage::`` line: ``Usage::`` alone, or closing a sentence (``... as X. Usage::``).
_USAGE = re.compile(r"(?:^|\s)Usage::\s*$")

#: The collector must find at least this many blocks (a broken collector finds none and passes).
MIN_BLOCKS = 100

#: Blocks that need what a test run does not have, by id, with the reason. Keep this small: an
#: example that can show the same thing on digits or FakeData, on the CPU, in one process, should.
NEEDS = {
    # load_cifar is CIFAR's own loader: there is nothing to show without the files, and the test
    # machines have neither CIFAR on disk nor the network to download it.
    "pyro_otmdr.workflow.data:load_cifar": "needs CIFAR-10 on disk or a download (network)",
}

#: Blocks that need an optional extra, by id, with the module it installs: they run where it is
#: installed (CI installs every extra with ``.[dev]``) and skip where it is not.
EXTRAS = {
    "pyro_otmdr.data_space.autoattack": "pyautoattack",
    "pyro_otmdr.data_space.autoattack:autoattack": "pyautoattack",
}

pytestmark = pytest.mark.filterwarnings(
    # az.loo on an untrained toy model: its Pareto-k warning is expected there.
    "ignore:Estimated shape parameter of Pareto distribution:UserWarning"
)


def _is_deprecated_alias(source: str) -> bool:
    """Whether a module's source calls ``moved(...)`` (:mod:`pyro_otmdr._deprecated`)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "moved":
                return True
    return False


def _modules() -> dict[str, str]:
    """``{name: source}`` of every module of the package, the package first. Deprecated aliases
    are left out without being imported (importing one warns and replaces it by its new home),
    and so are ``__main__`` modules (they run the command)."""
    found = {pyro_otmdr.__name__: inspect.getsource(pyro_otmdr)}
    for info in pkgutil.walk_packages(pyro_otmdr.__path__, prefix=f"{pyro_otmdr.__name__}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        with open(importlib.util.find_spec(info.name).origin, encoding="utf-8") as file:
            source = file.read()
        if not _is_deprecated_alias(source):
            found[info.name] = source
    return found


def _usage_blocks(doc: str | None) -> Iterator[str]:
    """The dedented literal block after each ``Usage::`` line of a docstring: the lines indented
    more than the marker's line, up to the first non-blank line indented less than the block."""
    if not doc:
        return
    lines = inspect.cleandoc(doc).splitlines()
    for i, line in enumerate(lines):
        if not _USAGE.search(line):
            continue
        marker_indent = len(line) - len(line.lstrip())
        block: list[str] = []
        block_indent = None
        for body in lines[i + 1 :]:
            if not body.strip():
                block.append("")
                continue
            indent = len(body) - len(body.lstrip())
            if block_indent is None:
                if indent <= marker_indent:
                    break  # no indented block after the marker
                block_indent = indent
            elif indent < block_indent:
                break
            block.append(body)
        code = textwrap.dedent("\n".join(block)).strip("\n")
        if code:
            yield code + "\n"


def _documented(module) -> Iterator[tuple[str, str | None]]:
    """``(qualified name, own docstring)`` of the module and of each public function, class,
    method and property defined in it. Own docstrings only (``__doc__``; :func:`inspect.getdoc`
    would inherit them), so that a block is collected once, where it is written."""
    yield "", module.__doc__
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj.__doc__
        elif inspect.isclass(obj):
            yield name, obj.__doc__
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__", "__call__"):
                    continue
                if isinstance(member, staticmethod | classmethod):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    yield f"{name}.{attr}", member.__doc__


def _collect():
    """``(blocks, broken, sources)``: ``(id, code)`` of every ``Usage::`` block, the modules that
    failed to import with their error, and every module's source. An id is ``module:qualname``
    (the module's own docstring: ``module``), with ``[k]`` when a docstring has several blocks."""
    blocks, broken = [], {}
    sources = _modules()
    for module_name in sources:
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # reported by test_every_module_imports
            broken[module_name] = error
            continue
        for qualname, doc in _documented(module):
            found = list(_usage_blocks(doc))
            for k, code in enumerate(found):
                ident = f"{module_name}:{qualname}" if qualname else module_name
                blocks.append((f"{ident}[{k}]" if len(found) > 1 else ident, code))
    return blocks, broken, sources


BLOCKS, BROKEN, SOURCES = _collect()


def _params() -> list:
    params = []
    for ident, code in BLOCKS:
        marks = []
        if ident in NEEDS:
            marks.append(pytest.mark.skip(reason=NEEDS[ident]))
        if ident in EXTRAS and importlib.util.find_spec(EXTRAS[ident]) is None:
            reason = f"needs {EXTRAS[ident]}, an optional extra (.[dev] installs it)"
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(code, id=ident, marks=marks))
    return params


def _global_state() -> dict:
    """What an example must leave as it found it: later examples and tests depend on it."""
    return {
        "default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "pyro module_local_params": pyro.settings.get("module_local_params"),
        "torch.distributed process group": torch.distributed.is_initialized(),
    }


def test_every_module_imports():
    """A module that fails to import hides its examples from the collector."""
    broken = dict(BROKEN)
    assert not broken, "; ".join(f"{name}: {error!r}" for name, error in broken.items())


def test_the_collector_finds_every_block():
    assert len(BLOCKS) >= MIN_BLOCKS, f"only {len(BLOCKS)} Usage:: blocks found"
    assert len({ident for ident, _ in BLOCKS}) == len(BLOCKS), "two blocks share an id"
    stale = (set(NEEDS) | set(EXTRAS)) - {ident for ident, _ in BLOCKS}
    assert not stale, f"NEEDS or EXTRAS names blocks that no longer exist: {sorted(stale)}"
    # Every Usage:: line of a module's source is a block collected from it: one in a private
    # function, a nested class or a comment would otherwise never run.
    per_module: dict[str, int] = {}
    for ident, _ in BLOCKS:
        module = ident.split(":")[0]
        per_module[module] = per_module.get(module, 0) + 1
    missed = {}
    for name, source in SOURCES.items():
        written = sum(1 for line in source.splitlines() if _USAGE.search(line))
        if name not in BROKEN and written != per_module.get(name, 0):
            missed[name] = (written, per_module.get(name, 0))
    assert not missed, f"Usage:: lines written vs blocks collected, per module: {missed}"


@pytest.mark.parametrize("code", _params())
def test_usage_example_runs(code, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    before = _global_state()
    exec(compile(code, f"<{request.node.callspec.id}>", "exec"), {"__name__": "__example__"})
    assert _global_state() == before, "the example changed the process's global settings"
