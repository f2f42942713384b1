"""``otmdr train``: train one run, checkpoint every epoch, evaluate it, write the run directory.

The run directory is locked while the command runs (a second process writing it is refused);
``--out`` naming a directory that holds a run is refused unless ``--overwrite`` is given, which
removes that run's files first. ``--skip-nonfinite`` skips a batch whose loss is not finite.

Ctrl-C is a normal way to stop: the command says where the last checkpoint is and prints the
exact ``otmdr train --resume RUN_DIR`` command, and exits with status 130.

Command line::

    otmdr train --guide normal --method otmdr --epochs 30 --out runs/bnn
    otmdr train --guide delta --method otmdr --data-robust trades --eps 0.1 --beta 6
    otmdr train --resume runs/bnn
    otmdr train --guide delta --epochs 5 --out runs/bnn --overwrite   # replace that run
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..config import ExperimentConfig
from ..experiment import Experiment, build_experiment
from ..names import DATA_ROBUST_PARAMS
from .parser import UsageError
from .rundir import (
    clear_run,
    config_from_args,
    holds_run,
    load_run,
    mean_step_ms,
    print_metrics,
    print_target_units,
    require_run,
    train_into,
    write_json,
)
from .runlock import run_lock

__all__ = ["run"]


def _out(args: argparse.Namespace) -> tuple[Path, ExperimentConfig | None]:
    """The run directory, and the new run's configuration (``None`` with ``--resume``)."""
    if args.resume is not None:
        return require_run(args.resume), None
    config = config_from_args(
        args, guide=args.guide, method=args.method, seed=args.seed, data_robust=args.data_robust
    )
    name = f"{config.dataset}-{config.guide}-{config.method}"
    name += f"-{config.data_robust}" if config.data_robust != "none" else ""
    return args.out or Path("runs") / name, config


def _start(
    args: argparse.Namespace, out: Path, config: ExperimentConfig | None
) -> tuple[Experiment, int, int, list[dict]]:
    """A new run in ``out`` (refusing, without ``--overwrite``, to replace a run there), or the
    run saved there (``--resume``). Call it under the directory's lock."""
    if config is None:
        experiment, checkpoint = load_run(out, args.device)
        return experiment, checkpoint.epoch, checkpoint.step, list(checkpoint.extra["history"])
    found = holds_run(out)
    if found and not args.overwrite:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise UsageError(
            f"--out {out} holds a run already ({names}): continue it with "
            f"'otmdr train --resume {shlex.quote(str(out))}', or replace it with --overwrite"
        )
    clear_run(out)
    write_json(out / "config.json", config.to_dict())
    return build_experiment(config), 0, 0, []


def _interrupted(out: Path, history: list[dict]) -> int:
    """Say where the last checkpoint is and how to resume; the exit status of Ctrl-C."""
    if history:
        print(
            f"\ninterrupted: the last checkpoint is {out / 'checkpoint.pt'} (after epoch "
            f"{history[-1]['epoch']}); continue with:\n  otmdr train --resume "
            f"{shlex.quote(str(out))}",
            file=sys.stderr,
        )
    else:
        print(
            "\ninterrupted before the first epoch ended: there is no checkpoint to resume "
            "from; run the same command again with --overwrite",
            file=sys.stderr,
        )
    return 130


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_run(config: ExperimentConfig, out: Path) -> str:
    """The line ``otmdr train`` and ``otmdr finetune`` print before training: what runs, where."""
    return (
        f"{config.dataset} {config.model} {config.guide} {config.method} "
        f"rho={config.rho if config.method != 'svi' else '-'} "
        f"{_robust_settings(config)}"
        f"{config.optimizer} lr={config.lr} {config.schedule} on {config.device} -> {out}"
    )


def _robust_settings(config: ExperimentConfig) -> str:
    """``data-robust trades eps=0.1 beta=6 `` (empty without a data-robust loss)."""
    if config.data_robust == "none":
        return ""
    names = DATA_ROBUST_PARAMS[config.data_robust]
    values = " ".join(f"{name}={_shown(getattr(config, name))}" for name in names)
    return f"data-robust {config.data_robust} {values} "


def run(args: argparse.Namespace) -> int:
    """``otmdr train``: train, checkpoint every epoch, evaluate on test, write the run dir."""
    out, config = _out(args)
    if config is not None:
        out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "train"):
        return _train(args, out, *_start(args, out, config))


def _train(
    args: argparse.Namespace,
    out: Path,
    experiment: Experiment,
    start_epoch: int,
    steps: int,
    history: list[dict],
) -> int:
    config = experiment.config
    if start_epoch:
        print(f"resuming {out} after epoch {start_epoch} of {config.epochs}")
    print(describe_run(config, out))

    log, progress = (None, False) if args.quiet else (print, None)
    try:
        result = train_into(
            out,
            experiment,
            start_epoch=start_epoch,
            steps=steps,
            history=history,
            log=log,
            progress=progress,
            skip_nonfinite=args.skip_nonfinite,
        )
    except KeyboardInterrupt:
        return _interrupted(out, history)
    step_ms = mean_step_ms(history)
    print(f"test ({len(result.labels)} examples, {result.num_draws} draws), {step_ms:.1f} ms/step:")
    print_metrics(result.metrics)
    print_target_units(experiment, result.metrics)
    print(f"run directory: {out}")
    return 0
