"""The ``otmdr`` argument parser: flags, value types, and the errors a command may raise.

It imports only the standard library, :mod:`..names` and :mod:`..config`, whose
:class:`~..config.ExperimentConfig` declares each run flag once (the parser builds the flags
from it), so ``otmdr --help`` and a bad flag answer at once; each command's module, with torch
and Pyro, is imported only when the command runs.

Usage::

    from pyro_otmdr.experiments.cli.parser import build_parser

    args = build_parser().parse_args(["train", "--guide", "delta", "--epochs", "5"])
    assert (args.command, args.guide, args.epochs) == ("train", "delta", 5)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..names import DATASET_NAMES, GUIDES, METHODS, SHIFT_NAMES, THREAT_NAMES
from ..settings import Number, name_list, setting_of

__all__ = ["RunError", "UsageError", "build_parser"]


class UsageError(Exception):
    """A bad combination of arguments found after parsing (exit status 2, like argparse)."""


class RunError(Exception):
    """A run directory that cannot be loaded (exit status 1)."""


def _severities(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        values = ()
    if not values or not set(values) <= {1, 2, 3, 4, 5}:
        raise argparse.ArgumentTypeError(f"expected severities in 1..5 like 1,3,5: {text!r}")
    return values


def float_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated numbers, each finite and > 0."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be a number > 0, got {text!r}")
    return values


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: an ``int`` or ``float`` > 0."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def box_fraction(text: str) -> float:
    """An argparse type: a number in ``(0, 1]``, a radius in the units of the ``[0, 1]`` box."""
    value = positive(float)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(
            f"must be in (0, 1], the units of the inputs' [0, 1] box, got {text!r}"
        )
    return value


def out_dir(text: str) -> Path:
    """An argparse type: a directory to write into; not empty, not ``/``, not an existing file."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path would write into the current directory; name a directory"
        )
    path = Path(text)
    if path.resolve() == Path(path.resolve().anchor):
        raise argparse.ArgumentTypeError(f"refusing to write into the root directory {text!r}")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return path


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="where to run (default: cuda when available)"
    )


def _add_run_flags(parser: argparse.ArgumentParser, grid: bool, overrides: bool = False) -> None:
    """The flags of one run, one per field of :class:`ExperimentConfig`, built from its
    declarations; ``grid`` (compare) leaves out the fields compare spans with its own flags
    (guide, method, seed) and takes a comma list where a setting spans a grid dimension.
    ``overrides`` (finetune): no defaults, so a flag is in the namespace only when given."""
    groups: dict[str, Any] = {}
    for spec in fields(ExperimentConfig):
        declared = setting_of(spec)
        if grid and declared.grid == "own":
            continue
        if declared.group not in groups:
            groups[declared.group] = parser.add_argument_group(declared.group)
        options = declared.argparse_options(spec, grid=grid)
        if overrides:
            options.update(default=argparse.SUPPRESS, help=declared.help)
        groups[declared.group].add_argument(declared.flag_for(spec), **options)


def _add_shift_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shift",
        type=name_list(SHIFT_NAMES),
        help=f"comma-separated distribution shifts from {', '.join(SHIFT_NAMES)}",
    )
    parser.add_argument(
        "--severity", type=_severities, default=(1, 2, 3, 4, 5), help="shift severities (1..5)"
    )


def _train_parser(commands: Any) -> argparse.ArgumentParser:
    train = commands.add_parser("train", help="train one run and write a run directory")
    _add_run_flags(train, grid=False)
    train.add_argument(
        "--out", type=out_dir, help="run directory (default runs/DATASET-GUIDE-METHOD)"
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its files, attack and shift outputs included)",
    )
    train.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip a batch whose loss is NaN or infinite (parameters untouched), counted in "
        "history.json, instead of stopping",
    )
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines, no progress bar")
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run saved in RUN_DIR (its config.json; other run flags are ignored)",
    )
    train.set_defaults(module="train")
    return train


def _weight_noise(text: str) -> float:
    """An argparse type: a finite number >= 0 (``--weight-noise``)."""
    note = " (the noise's standard deviation in units of each weight tensor's, e.g. 0.01)"
    return Number(float, low=0, note=note).parse(text)


def _finetune_parser(commands: Any) -> argparse.ArgumentParser:
    finetune = commands.add_parser(
        "finetune",
        help="train a new run that starts from a finished run's parameters",
        description="Fine-tune a finished run: a new run directory (--out) whose configuration "
        "is RUN_DIR's config.json with the run flags given on top, and which starts from "
        "RUN_DIR's final parameters with a fresh optimiser and schedule. RUN_DIR is only read.",
        epilog="Run flags not given keep the parent's values (no defaults apply); the flags of "
        "the model and guide (--dataset, --model, --hidden, --width, --guide, --members, "
        "--prior-scale, --init-scale) must keep them. Continue an interrupted fine-tuning with "
        "'otmdr train --resume NEW_DIR'.",
    )
    finetune.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="the finished run to start from"
    )
    finetune.add_argument("--out", type=out_dir, required=True, help="the new run directory")
    finetune.add_argument(
        "--overwrite", action="store_true", help="replace the run already in --out"
    )
    finetune.add_argument(
        "--reinit-last",
        action="store_true",
        help="re-initialise the last linear layer (a fresh run's initial values: points, "
        "members, AutoNormal's means at the network's initialisation, its scales at "
        "--init-scale)",
    )
    finetune.add_argument(
        "--weight-noise",
        type=_weight_noise,
        default=0.0,
        metavar="STD",
        help="add N(0, (STD * std(w))^2) to every weight tensor w (not biases), seeded by "
        "--seed (default 0: none)",
    )
    finetune.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip a batch whose loss is NaN or infinite instead of stopping",
    )
    finetune.add_argument(
        "--quiet", action="store_true", help="no per-epoch lines, no progress bar"
    )
    _add_run_flags(finetune, grid=False, overrides=True)
    finetune.set_defaults(module="finetune")
    return finetune


def _evaluate_parser(commands: Any) -> argparse.ArgumentParser:
    evaluate = commands.add_parser("evaluate", help="evaluate a run directory again")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--ood", help=f"OOD inputs: one of {', '.join(DATASET_NAMES)}")
    evaluate.add_argument("--num-samples", type=positive(int), help="AutoNormal draws")
    _add_shift_flags(evaluate)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(evaluate)
    evaluate.set_defaults(module="evaluate")
    return evaluate


def _attack_parser(commands: Any) -> argparse.ArgumentParser:
    attack = commands.add_parser("attack", help="robust accuracy of a run under attacks")
    attack.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    attack.add_argument(
        "--threat",
        type=name_list(THREAT_NAMES),
        default=["w2-linf", "linf"],
        help=f"comma-separated threats from {', '.join(THREAT_NAMES)} (default w2-linf,linf)",
    )
    attack.add_argument(
        "--budget",
        type=float_list,
        default=(0.02, 0.05, 0.1),
        help="comma-separated budgets in units of the [0, 1] input box (default 0.02,0.05,0.1)",
    )
    attack.add_argument("--num-samples", type=positive(int), help="AutoNormal draws")
    attack.add_argument("--steps", type=positive(int), default=50, help="iterates per attack")
    attack.add_argument("--split", choices=("test", "val"), default="test")
    attack.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(attack)
    attack.set_defaults(module="attack")
    return attack


def _compare_parser(commands: Any) -> argparse.ArgumentParser:
    compare = commands.add_parser("compare", help="train guides x methods x seeds, tabulate")
    compare.add_argument("--guides", type=name_list(GUIDES), default=list(GUIDES))
    compare.add_argument("--methods", type=name_list(METHODS), default=list(METHODS))
    compare.add_argument("--seeds", type=positive(int), default=5, help="seeds 0..N-1")
    _add_run_flags(compare, grid=True)
    _add_shift_flags(compare)
    attack = compare.add_argument_group("robust accuracy (test split)")
    attack.add_argument(
        "--robust-budget",
        type=box_fraction,
        help="budget of the W2-linf (W-PGD, ReDLR) and linf (PGD, CE) attacks; given, or with "
        "--data-robust other than none, adds their robust accuracy (default 0.1)",
    )
    attack.add_argument(
        "--attack-steps", type=positive(int), default=50, help="iterates per attack (50)"
    )
    attack.add_argument(
        "--attack-samples",
        type=positive(int),
        help="AutoNormal draws the attacks go through (default --num-samples)",
    )
    compare.add_argument("--out", type=out_dir, default=Path("runs/compare"), help="output folder")
    compare.add_argument("--quiet", action="store_true", help="no progress bar, no run lines")
    compare.set_defaults(module="compare")
    return compare


def build_parser() -> argparse.ArgumentParser:
    """The ``otmdr`` parser: ``train``, ``finetune``, ``evaluate``, ``attack`` and ``compare``."""
    parser = argparse.ArgumentParser(
        prog="otmdr", description="OT-MDR, SAM and plain SVI for Pyro classifiers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_train_parser, _finetune_parser, _evaluate_parser, _attack_parser, _compare_parser):
        add(commands).add_argument(
            "--debug", action="store_true", help="on an error, show its traceback too"
        )
    return parser
