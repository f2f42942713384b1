"""A setting declared once: its kind of value, its flag, its help; no torch, no Pyro.

Each field of :class:`~pyro_otmdr.experiments.config.ExperimentConfig` is declared with
:func:`setting`. The declaration is all there is: the ``otmdr`` command builds its flags from it
(name, type, default, choices, help, group), ``config_from_args`` maps the flags back by field
name, and :meth:`ExperimentConfig.resolved` checks each value with the same :class:`Kind` that
parses its flag. A new setting is one field; nothing else repeats it.

Usage::

    from dataclasses import fields

    from pyro_otmdr.experiments import ExperimentConfig
    from pyro_otmdr.experiments.settings import setting_of

    spec = {f.name: f for f in fields(ExperimentConfig)}["n_particles"]
    declared = setting_of(spec)         # declared as setting(1, ..., flag="--particles")
    assert declared.flag_for(spec) == "--particles" and declared.kind.parse("2") == 2
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, field
from typing import Any

__all__ = [
    "Choice",
    "Flag",
    "IntList",
    "Kind",
    "Number",
    "Setting",
    "Text",
    "check_setting",
    "list_of",
    "name_list",
    "setting",
    "setting_of",
]


class Kind:
    """The values a setting takes: :meth:`parse` reads a flag's text (an argparse ``type``),
    :meth:`check` refuses a value given in Python or JSON. Both say what is expected."""

    choices: tuple[str, ...] | None = None

    def parse(self, text: str) -> Any:
        """The value of ``text``; ``argparse.ArgumentTypeError`` when it is not one."""
        raise NotImplementedError

    def check(self, name: str, value: Any) -> None:
        """``ValueError`` naming ``name`` unless ``value`` is one of this kind's values."""
        raise NotImplementedError


def check_setting(spec: Field, value: Any) -> None:
    """``ValueError`` unless ``value`` suits the field ``spec`` declared by :func:`setting`."""
    declared = setting_of(spec)
    if value is None and declared.optional:
        return
    declared.kind.check(spec.name, value)


@dataclass(frozen=True)
class Choice(Kind):
    """One of ``names``; ``what`` names the thing in errors (``unknown guide 'x'; ...``)."""

    names: tuple[str, ...]
    what: str

    @property
    def choices(self) -> tuple[str, ...]:  # argparse lists them in usage and errors
        return self.names

    def parse(self, text: str) -> str:
        return text  # argparse checks ``choices``

    def check(self, name: str, value: Any) -> None:
        if value not in self.names:
            raise ValueError(
                f"unknown {self.what} {value!r}; choose one of {', '.join(self.names)}"
            )


@dataclass(frozen=True)
class Number(Kind):
    """An ``int`` or a finite ``float`` in a range: ``low`` (excluded when ``open_low``) up to
    ``high``; ``note`` is added to the error (the unit, say)."""

    type: type
    low: float | None = None
    open_low: bool = False
    high: float | None = None
    note: str = ""

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"<= {self.high:g}" if self.high is not None else ""

    def _inside(self, value: float) -> bool:
        if self.type is float and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def _noun(self) -> str:
        return "an integer" if self.type is int else "a finite number"

    def parse(self, text: str) -> Any:
        try:
            value = self.type(text)
        except ValueError:
            noun = "an integer" if self.type is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not self._inside(value):
            noun = "an integer" if self.type is int else "a number"
            raise argparse.ArgumentTypeError(
                f"must be {noun} {self._range()}{self.note}, got {text!r}"
            )
        return value

    def check(self, name: str, value: Any) -> None:
        kinds = (int,) if self.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not self._inside(value):
            raise ValueError(
                f"{name} must be {self._noun()} {self._range()}{self.note}, got {value!r}"
            )


@dataclass(frozen=True)
class IntList(Kind):
    """Positive integers, written ``128`` or ``256,256`` on the command line."""

    def parse(self, text: str) -> tuple[int, ...]:
        try:
            sizes = tuple(int(part) for part in text.split(","))
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) < 1:
            raise argparse.ArgumentTypeError(
                f"expected positive ints like 128 or 256,256: {text!r}"
            )
        return sizes

    def check(self, name: str, value: Any) -> None:
        items = value if isinstance(value, list | tuple) else ()
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ValueError(f"{name} must be a non-empty sequence of integers, got {value!r}")
        if min(items) < 1:
            raise ValueError(f"{name} must hold integers >= 1, got {value!r}")


@dataclass(frozen=True)
class Text(Kind):
    """A string; ``choices`` restricts the command line only (Python may say ``cuda:1``)."""

    choices: tuple[str, ...] | None = None

    def parse(self, text: str) -> str:
        return text

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")


@dataclass(frozen=True)
class Flag(Kind):
    """``True`` when the flag is given (argparse ``store_true``)."""

    def parse(self, text: str) -> bool:  # pragma: no cover - a flag takes no text
        raise NotImplementedError

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")


#: ``cli_default`` when the flag's default is the field's.
FIELD_DEFAULT: Any = type("FieldDefault", (), {"__repr__": lambda self: "FIELD_DEFAULT"})()


@dataclass(frozen=True)
class Setting:
    """How one configuration field appears on the command line; see :func:`setting`."""

    group: str
    help: str
    kind: Kind
    flag: str | None = None
    optional: bool = False
    cli_default: Any = FIELD_DEFAULT
    omitted: Callable[[dict[str, Any]], Any] | None = None
    grid: str | None = None
    grid_help: str | None = None

    def flag_for(self, spec: Field) -> str:
        """The flag: ``flag`` when given, else ``--`` and the field name with dashes."""
        return self.flag or "--" + spec.name.replace("_", "-")

    def argparse_options(self, spec: Field, grid: bool = False) -> dict[str, Any]:
        """The keywords of ``add_argument`` for this setting (a comma list in a grid)."""
        default = spec.default if self.cli_default is FIELD_DEFAULT else self.cli_default
        if self.omitted is not None:
            default = None
        if isinstance(self.kind, Flag):
            return {"dest": spec.name, "action": "store_true", "help": self.help}
        options: dict[str, Any] = {"dest": spec.name, "default": default}
        metavar = self.flag_for(spec).lstrip("-").replace("-", "_").upper()
        if grid and self.grid == "list":
            options["type"] = list_of(self.kind)
            options["metavar"] = "NAMES" if self.kind.choices is not None else "VALUES"
            options["default"] = None if default is None else [default]
            options["help"] = self.grid_help or self.help
            return options
        if self.kind.choices is not None:
            options["choices"] = self.kind.choices
        else:
            options["metavar"] = metavar
            if not isinstance(self.kind, Text):
                options["type"] = self.kind.parse
        shown = "" if default is None or isinstance(default, bool) else _shown(default)
        options["help"] = f"{self.help} (default {shown})" if shown else self.help
        return options


def setting(
    default: Any,
    group: str,
    help: str,
    kind: Kind,
    *,
    flag: str | None = None,
    optional: bool = False,
    cli_default: Any = FIELD_DEFAULT,
    omitted: Callable[[dict[str, Any]], Any] | None = None,
    grid: str | None = None,
    grid_help: str | None = None,
) -> Any:
    """A dataclass field with its :class:`Setting`, the one declaration of a setting.

    :param default: the field's default (and the flag's, unless ``cli_default`` or ``omitted``).
    :param group: the ``--help`` section of the flag.
    :param kind: the values it takes (:class:`Choice`, :class:`Number`, ...).
    :param flag: the flag when it is not the field name (``--particles`` for ``n_particles``).
    :param optional: ``None`` is a value too (``rho=None``: the guide's default radius).
    :param cli_default: the flag's default when it differs from the field's (``--device``:
        ``None``, the GPU when there is one).
    :param omitted: the value when the flag is not given, from the other values (the learning
        rate of the chosen optimiser); the field's own default then holds for Python only.
    :param grid: in ``otmdr compare``: ``"list"``, a comma list that spans a grid dimension;
        ``"own"``, left out (compare has its own flag, ``--guides``, ``--seeds``).
    """
    declared = Setting(group, help, kind, flag, optional, cli_default, omitted, grid, grid_help)
    return field(default=default, metadata={"setting": declared})


def setting_of(spec: Field) -> Setting:
    """The :class:`Setting` of a field declared with :func:`setting`."""
    return spec.metadata["setting"]


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def list_of(kind: Kind) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated values, each of ``kind`` (a grid dimension)."""
    if kind.choices is not None:
        return name_list(kind.choices)

    def parse(text: str) -> list[Any]:
        parts = [part.strip() for part in text.split(",")]
        try:
            return [kind.parse(part) for part in parts]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"every value {err}, in {text!r}") from None

    return parse


def name_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names from ``allowed``."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        bad = [name for name in names if name not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {','.join(bad) or repr(text)} "
                f"(choose from {', '.join(map(repr, allowed))})"
            )
        return names

    return parse
