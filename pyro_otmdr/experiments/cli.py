"""The ``otmdr`` command: train one run, evaluate a run again, compare methods and guides.

``otmdr train`` builds an :class:`~pyro_otmdr.experiments.ExperimentConfig` from its flags, trains
with progress lines and writes a run directory (``--out``)::

    config.json        the resolved configuration (ExperimentConfig.from_dict reads it)
    history.json       loss, monitored accuracy, learning rate and step time per epoch
    checkpoint.pt      param store, optimiser and loss state, epoch, step, config (every epoch)
    metrics.json       test metrics, mean step time, versions
    tree.nc            the ArviZ DataTree of the test predictive (az.from_netcdf reads it)
    calibration.png    reliability diagram, and calibration_pava.png (ArviZ PAV plot)

``otmdr evaluate RUN_DIR`` rebuilds the run from ``config.json`` and ``checkpoint.pt`` and
evaluates it again (``--split val|test``, ``--ood fakedata|DATASET``). ``otmdr attack RUN_DIR``
measures its robust accuracy under Wasserstein and pointwise attacks (``--threat``,
``--budget``), writes ``robustness.json`` and ``robustness.png`` and adds the group
``robustness`` to ``tree.nc``. ``otmdr compare`` trains a
grid of guides x methods x seeds and writes a markdown table of mean ± std metrics.

Usage::

    otmdr train --guide normal --method otmdr --epochs 30 --out runs/bnn
    otmdr evaluate runs/bnn --ood fakedata
    otmdr attack runs/bnn --threat w2-linf,linf --budget 0.02,0.05,0.1
    otmdr compare --guides delta,normal --methods svi,otmdr --seeds 3 --out runs/compare
    python -m pyro_otmdr train --help
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyro
import torch

from ..evaluation import EvaluationResult
from ..evaluation.robustness import THREATS
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    DEFAULT_RHO,
    GUIDES,
    METHODS,
    OPTIMIZERS,
    SCHEDULES,
    Experiment,
    ExperimentConfig,
    attack_experiment,
    build_experiment,
    evaluate_experiment,
    ood_inputs,
    train_experiment,
    warm_up,
)
from .data import DATASET_NAMES
from .models import MODEL_NAMES

__all__ = ["build_parser", "main"]

DEFAULT_LR = {"adam": 1e-2, "sgd": 0.1}
TABLE_METRICS = (("accuracy", "accuracy"), ("nll", "NLL"), ("brier", "Brier"), ("ece", "ECE"))


class _UsageError(Exception):
    """A bad combination of arguments found after parsing (exit status 2, like argparse)."""


class _RunError(Exception):
    """A run directory that cannot be loaded (exit status 1)."""


# ----------------------------------------------------------------------------------- parser


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _name_list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
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


def _int_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints like 128 or 256,256: {text!r}")
    return sizes


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every budget must be a number > 0, got {text!r}")
    return values


def _positive(kind: type) -> Callable[[str], Any]:
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


def _non_negative_float(text: str) -> float:
    value = _positive(float)(text) if text.strip() not in ("0", "0.0") else 0.0
    return value


def _add_run_flags(parser: argparse.ArgumentParser, grid: bool) -> None:
    """The flags of one run; ``grid`` leaves out guide, method and seed (compare's own)."""
    pos_int, pos_float = _positive(int), _positive(float)
    data = parser.add_argument_group("data and model")
    data.add_argument("--dataset", choices=DATASET_NAMES, default="digits")
    data.add_argument("--data-dir", help="folder holding the CIFAR archive (default ./data)")
    data.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR")
    data.add_argument("--val-size", type=int, default=0, help="CIFAR images held out for val")
    data.add_argument("--model", choices=MODEL_NAMES, default="mlp")
    data.add_argument("--hidden", type=_int_list, default=(128,), help="mlp sizes, e.g. 256,256")
    data.add_argument("--width", type=pos_int, help="first-stage channels of cnn/resnet10/18")
    data.add_argument("--prior-scale", type=pos_float, default=1.0, help="N(0, s^2) prior")
    method = parser.add_argument_group("method")
    if not grid:
        method.add_argument("--guide", choices=GUIDES, default="normal")
        method.add_argument("--method", choices=METHODS, default="otmdr")
    rho_help = ", ".join(f"{g} {r}" for g, r in DEFAULT_RHO.items())
    method.add_argument("--rho", type=pos_float, help=f"first radius (default: {rho_help})")
    method.add_argument("--rho2", type=pos_float, help="second radius (default 2 * rho)")
    method.add_argument("--particles", type=pos_int, default=1, help="OT-MDR particles K")
    method.add_argument("--noise", type=_non_negative_float, default=0.0, help="ascent noise std")
    method.add_argument("--members", type=pos_int, default=5, help="ensemble members")
    method.add_argument("--init-scale", type=pos_float, default=1e-3, help="AutoNormal's scales")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=pos_int, default=30)
    opt.add_argument("--batch-size", type=_positive(int), default=128)
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    opt.add_argument("--lr", type=pos_float, help="default 0.01 (adam), 0.1 (sgd, per example)")
    opt.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    opt.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="per-epoch lr")
    run = parser.add_argument_group("run")
    if not grid:
        run.add_argument("--seed", type=int, default=0)
    run.add_argument("--num-samples", type=pos_int, default=32, help="AutoNormal test draws")
    run.add_argument("--device", choices=("cpu", "cuda"), default=_default_device())
    run.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def build_parser() -> argparse.ArgumentParser:
    """The ``otmdr`` parser: ``train``, ``evaluate``, ``attack`` and ``compare`` commands."""
    parser = argparse.ArgumentParser(
        prog="otmdr", description="OT-MDR, SAM and plain SVI for Pyro classifiers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train one run and write a run directory")
    _add_run_flags(train, grid=False)
    train.add_argument("--out", type=Path, help="run directory (default runs/DATASET-GUIDE-METHOD)")
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run saved in RUN_DIR (its config.json; other run flags are ignored)",
    )
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a run directory again")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--ood", help=f"OOD inputs: one of {', '.join(DATASET_NAMES)}")
    evaluate.add_argument("--num-samples", type=_positive(int), help="AutoNormal draws")
    evaluate.add_argument("--device", choices=("cpu", "cuda"), default=_default_device())
    evaluate.set_defaults(handler=cmd_evaluate)

    attack = commands.add_parser("attack", help="robust accuracy of a run under attacks")
    attack.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    attack.add_argument(
        "--threat",
        type=_name_list(tuple(THREATS)),
        default=["w2-linf", "linf"],
        help=f"comma-separated threats from {', '.join(THREATS)} (default w2-linf,linf)",
    )
    attack.add_argument(
        "--budget",
        type=_float_list,
        default=(0.02, 0.05, 0.1),
        help="comma-separated budgets in units of the [0, 1] input box (default 0.02,0.05,0.1)",
    )
    attack.add_argument("--num-samples", type=_positive(int), help="AutoNormal draws")
    attack.add_argument("--steps", type=_positive(int), default=50, help="iterates per attack")
    attack.add_argument("--split", choices=("test", "val"), default="test")
    attack.add_argument("--device", choices=("cpu", "cuda"), default=_default_device())
    attack.set_defaults(handler=cmd_attack)

    compare = commands.add_parser("compare", help="train guides x methods x seeds, tabulate")
    compare.add_argument("--guides", type=_name_list(GUIDES), default=list(GUIDES))
    compare.add_argument("--methods", type=_name_list(METHODS), default=list(METHODS))
    compare.add_argument("--seeds", type=_positive(int), default=5, help="seeds 0..N-1")
    _add_run_flags(compare, grid=True)
    compare.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    compare.set_defaults(handler=cmd_compare)
    return parser


def _config(args: argparse.Namespace, **grid: Any) -> ExperimentConfig:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda: CUDA is not available here; use --device cpu")
    values = dict(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        val_size=args.val_size,
        model=args.model,
        hidden=args.hidden,
        width=args.width,
        rho=args.rho,
        rho2=args.rho2,
        n_particles=args.particles,
        noise_std=args.noise,
        num_members=args.members,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr if args.lr is not None else DEFAULT_LR[args.optimizer],
        momentum=args.momentum,
        schedule=args.schedule,
        prior_scale=args.prior_scale,
        init_scale=args.init_scale,
        num_samples=args.num_samples,
        device=args.device,
        num_workers=args.workers,
    )
    values.update(grid)
    try:
        return ExperimentConfig(**values).resolved()
    except ValueError as err:
        raise _UsageError(str(err)) from None


# ----------------------------------------------------------------------------- run directory


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, allow_nan=True) + "\n")


def _save_checkpoint(
    path: Path, experiment: Experiment, epoch: int, step: int, history: list[dict]
) -> None:
    """Write the training state atomically with :func:`~pyro_otmdr.save_checkpoint`.

    Besides the param store, optimiser, loss generators and RNG states it keeps the config, the
    history so far and the model's buffers (BatchNorm statistics) as ``extra``.
    """
    buffers = {name: value.detach() for name, value in experiment.model.named_buffers()}
    extra = {"config": experiment.config.to_dict(), "history": history, "model_buffers": buffers}
    save_checkpoint(
        path, optim=experiment.optim, loss=experiment.loss, epoch=epoch, step=step, extra=extra
    )


def _load_run(run_dir: Path, device: str) -> tuple[Experiment, Checkpoint]:
    """Rebuild a run from ``config.json`` and load ``checkpoint.pt`` into it."""
    config_path, checkpoint_path = run_dir / "config.json", run_dir / "checkpoint.pt"
    for path in (config_path, checkpoint_path):
        if not path.is_file():
            raise _UsageError(f"{run_dir} is not a run directory of 'otmdr train': no {path.name}")
    try:
        config = ExperimentConfig.from_dict(json.loads(config_path.read_text()))
    except ValueError as err:
        raise _RunError(f"{config_path}: {err}") from None
    experiment = build_experiment(replace(config, device=device))
    warm_up(experiment)  # the guide builds its parameters (and draws from the RNG) before loading
    try:
        checkpoint = load_checkpoint(
            checkpoint_path, optim=experiment.optim, loss=experiment.loss, map_location=device
        )
    except CheckpointError as err:
        raise _RunError(str(err)) from None
    buffers = checkpoint.extra["model_buffers"]
    experiment.model.load_state_dict({k: v.to(device) for k, v in buffers.items()}, strict=False)
    return experiment, checkpoint


def _environment() -> dict[str, str]:
    return {
        "command": " ".join(["otmdr", *sys.argv[1:]]),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyro_otmdr": version("pyro-otmdr"),
    }


def _write_evaluation(
    out: Path, name: str, suffix: str, result: EvaluationResult, extra: dict
) -> None:
    """``<name><suffix>.json`` with the metrics, ``calibration<suffix>.png`` and its PAV plot."""
    _write_json(out / f"{name}{suffix}.json", {**extra, "metrics": result.metrics})
    result.plot_calibration(out / f"calibration{suffix}.png")


def _print_metrics(metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        print(f"  {name:<12} {value:.4f}")


# ---------------------------------------------------------------------------------- commands


def _start(args: argparse.Namespace) -> tuple[Experiment, Path, int, int, list[dict]]:
    """A new run from the flags, or (``--resume RUN_DIR``) the run saved in a run directory."""
    if args.resume is not None:
        experiment, checkpoint = _load_run(args.resume, args.device)
        history = list(checkpoint.extra["history"])
        return experiment, args.resume, checkpoint.epoch, checkpoint.step, history
    config = _config(args, guide=args.guide, method=args.method, seed=args.seed)
    out = args.out or Path("runs") / f"{config.dataset}-{config.guide}-{config.method}"
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", config.to_dict())
    return build_experiment(config), out, 0, 0, []


def cmd_train(args: argparse.Namespace) -> int:
    """``otmdr train``: train, checkpoint every epoch, evaluate on test, write the run dir."""
    experiment, out, start_epoch, steps, history = _start(args)
    config = experiment.config
    if start_epoch:
        print(f"resuming {out} after epoch {start_epoch} of {config.epochs}")
    print(
        f"{config.dataset} {config.model} {config.guide} {config.method} "
        f"rho={config.rho if config.method != 'svi' else '-'} "
        f"{config.optimizer} lr={config.lr} {config.schedule} on {config.device} -> {out}"
    )

    def checkpoint(stats, record) -> None:
        nonlocal steps
        steps += stats.steps
        history.append(record)
        _save_checkpoint(out / "checkpoint.pt", experiment, record["epoch"], steps, history)

    start = time.perf_counter()
    log = None if args.quiet else print
    train_experiment(experiment, log=log, on_epoch=checkpoint, start_epoch=start_epoch)
    train_seconds = time.perf_counter() - start
    _write_json(out / "history.json", history)
    result = evaluate_experiment(experiment)
    step_ms = _mean_step_ms(history)
    timing = {"step_ms": step_ms, "train_seconds": train_seconds, "steps": steps}
    _write_evaluation(out, "metrics", "", result, {"split": "test", **timing, **_environment()})
    result.to_datatree().to_netcdf(out / "tree.nc")
    print(f"test ({len(result.labels)} examples, {result.num_draws} draws), {step_ms:.1f} ms/step:")
    _print_metrics(result.metrics)
    print(f"run directory: {out}")
    return 0


def _mean_step_ms(history: Sequence[dict]) -> float:
    """Mean step time over the run, each epoch weighted by its number of steps."""
    timed = [r for r in history if not math.isnan(r["step_ms"])]
    return statistics.fmean([r["step_ms"] for r in timed], weights=[r["steps"] for r in timed])


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``otmdr evaluate RUN_DIR``: rebuild, load the checkpoint, evaluate, write JSON and PNGs."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda: CUDA is not available here; use --device cpu")
    experiment, checkpoint = _load_run(args.run_dir, args.device)
    x_ood = None if args.ood is None else ood_inputs(experiment, args.ood)
    result = evaluate_experiment(experiment, args.split, x_ood=x_ood, num_samples=args.num_samples)
    suffix = f"-{args.split}" + (f"-ood-{args.ood}" if args.ood else "")
    extra = {"split": args.split, "ood": args.ood, "epoch": checkpoint.epoch}
    _write_evaluation(args.run_dir, "evaluation", suffix, result, {**extra, **_environment()})
    print(f"{args.run_dir} after epoch {checkpoint.epoch}, {args.split} split"
          + (f", OOD {args.ood}" if args.ood else "") + ":")  # fmt: skip
    _print_metrics(result.metrics)
    print(f"wrote {args.run_dir / f'evaluation{suffix}.json'} and calibration{suffix}.png")
    return 0


def _add_to_tree(path: Path, report: Any, group: str) -> None:
    """Rewrite the run's ArviZ ``tree.nc`` with the report as the group ``group``.

    The new tree goes to a temporary file that replaces the old one only once it is complete, so
    a failed write leaves the old ``tree.nc`` as it was.
    """
    import xarray as xr

    with xr.open_datatree(path) as tree:
        tree = tree.load()
    partial = path.with_name(f".{path.name}.partial")
    try:
        report.to_datatree(tree, group=group).to_netcdf(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def cmd_attack(args: argparse.Namespace) -> int:
    """``otmdr attack RUN_DIR``: robustness report, ``robustness.json`` and ``robustness.png``."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda: CUDA is not available here; use --device cpu")
    experiment, checkpoint = _load_run(args.run_dir, args.device)
    report = attack_experiment(
        experiment,
        args.split,
        threats=args.threat,
        budgets=args.budget,
        num_samples=args.num_samples,
        steps=args.steps,
    )
    extra = {"split": args.split, "epoch": checkpoint.epoch, **_environment()}
    _write_json(args.run_dir / "robustness.json", {**extra, **report.to_dict()})
    report.plot(args.run_dir / "robustness.png")
    tree_path = args.run_dir / "tree.nc"
    if tree_path.is_file():
        group = "robustness" if args.split == "test" else f"robustness_{args.split}"
        _add_to_tree(tree_path, report, group)
    print(f"{args.run_dir} after epoch {checkpoint.epoch}, {args.split} split "
          f"({len(experiment.split_tensors(args.split)[1])} examples, "
          f"{report.settings['num_draws']} draws, {report.settings['protocol']}):")  # fmt: skip
    print(report.table())
    print(f"wrote {args.run_dir / 'robustness.json'}, robustness.png and a group in tree.nc")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``otmdr compare``: every guide x method x seed, then a markdown table of mean ± std."""
    grid = [(g, m, s) for g in args.guides for m in args.methods for s in range(args.seeds)]
    configs = [_config(args, guide=g, method=m, seed=s) for g, m, s in grid]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, config in enumerate(configs, 1):
        start = time.perf_counter()
        experiment = build_experiment(config)
        history = train_experiment(experiment)
        metrics = evaluate_experiment(experiment).metrics
        row = {
            "guide": config.guide,
            "method": config.method,
            "seed": config.seed,
            "rho": config.rho if config.method != "svi" else None,
            **metrics,
            "step_ms": _mean_step_ms(history),
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        print(
            f"[{index}/{len(configs)}] {config.guide:<8} {config.method:<6} seed {config.seed}: "
            f"acc {row['accuracy']:.4f}  nll {row['nll']:.4f}  ece {row['ece']:.4f}  "
            f"{row['step_ms']:.1f} ms/step  ({row['seconds']:.0f} s)",
            flush=True,
        )
    table = markdown_table(rows, args.guides, args.methods)
    command = " ".join(["otmdr", *sys.argv[1:]])
    (args.out / "results.md").write_text(f"```\n$ {command}\n```\n\n{table}")
    _write_json(args.out / "runs.json", rows)
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{table}\nwrote {args.out / 'results.md'}, runs.json and runs.csv")
    return 0


def _mean_std(values: Sequence[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(rows: Sequence[dict], guides: Sequence[str], methods: Sequence[str]) -> str:
    """Mean ± sample std over seeds of each metric and the step time, one line per cell."""
    header = ["guide", "method", "rho", *(label for _, label in TABLE_METRICS), "step (ms)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for guide in guides:
        for method in methods:
            cell = [r for r in rows if r["guide"] == guide and r["method"] == method]
            if not cell:
                continue
            rho = "-" if cell[0]["rho"] is None else f"{cell[0]['rho']:g}"
            values = [_mean_std([r[key] for r in cell], 4) for key, _ in TABLE_METRICS]
            step = _mean_std([r["step_ms"] for r in cell], 1)
            lines.append("| " + " | ".join([guide, method, rho, *values, step]) + " |")
    return "\n".join(lines) + f"\n\nmean ± sample std over {len(cell)} seeds\n"


# -------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otmdr`` command line; returns the exit status.

    Bad flags, and argument values that only the run can check, exit with status 2 and an
    argparse-style message; a data set that is missing or broken exits with status 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    try:
        return args.handler(args)
    except _UsageError as err:
        subparser.error(str(err))
    except (FileNotFoundError, RuntimeError, _RunError) as err:
        print(f"otmdr {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
