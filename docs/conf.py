"""Sphinx configuration of the pyro_otmdr docs: ``make docs`` builds them into docs/_build/html.

The user guide is Markdown (MyST); the API reference is autodoc over the package's reST
docstrings (``:param:`` fields, ``Usage::`` blocks). Nothing is executed but the imports.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyro_otmdr  # noqa: E402

project = "pyro_otmdr"
author = "the pyro_otmdr developers"
copyright = "the pyro_otmdr developers, Apache-2.0"
try:
    from importlib.metadata import version as _version

    release = _version("pyro-otmdr")
except Exception:  # not installed: the docs still build from the source tree
    release = "0.1.0"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: a heading's slug is its anchor, so `algorithms.md#w-pgd` and the like are stable links.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist", "dollarmath"]

# autodoc: reST docstrings, documented in source order, type hints in the signature only.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False
napoleon_google_docstring = False
napoleon_numpy_docstring = False
add_module_names = False

html_theme = "furo"
html_title = f"pyro_otmdr {release}"
html_static_path: list[str] = []


def _check_root_api(app) -> None:
    """Every name of ``pyro_otmdr.__all__`` is listed on the package-root API page."""
    from sphinx.util import logging

    page = (Path(app.srcdir) / "api" / "pyro_otmdr.rst").read_text()
    missing = [name for name in pyro_otmdr.__all__ if f".{name}\n" not in page]
    if missing:
        logging.getLogger(__name__).warning(
            "docs/api/pyro_otmdr.rst does not list %s of pyro_otmdr.__all__", ", ".join(missing)
        )


#: The layers the API reference documents, module by module (docs/api/<layer>.rst).
API_LAYERS = ("bayes", "model_space", "data_space", "evaluation", "workflow", "experiments")


def _check_layer_pages(app) -> None:
    """Every module of every layer has its section on the layer's API page (deprecated aliases,
    which call ``moved(__name__, ...)``, and private modules excepted)."""
    import pkgutil

    from sphinx.util import logging

    for layer in API_LAYERS:
        page = (Path(app.srcdir) / "api" / f"{layer}.rst").read_text()
        folder = ROOT / "pyro_otmdr" / layer
        for module in pkgutil.iter_modules([str(folder)]):
            path = f"{module.name}/__init__.py" if module.ispkg else f"{module.name}.py"
            source = folder / path
            if module.name.startswith("_") or "moved(__name__," in source.read_text():
                continue
            name = f"pyro_otmdr.{layer}.{module.name}"
            if f".. automodule:: {name}\n" not in page:
                logging.getLogger(__name__).warning(
                    "docs/api/%s.rst has no section for %s: add one", layer, name
                )


def setup(app) -> None:
    app.connect("builder-inited", _check_root_api)
    app.connect("builder-inited", _check_layer_pages)
