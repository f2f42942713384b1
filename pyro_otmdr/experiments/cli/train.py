"""``otmdr train``: train one run, checkpoint every epoch, evaluate it, write the run directory.

Ctrl-C is a normal way to stop: the command says where the last checkpoint is and prints the
exact ``otmdr train --resume RUN_DIR`` command, and exits with status 130.

Usage::

    otmdr train --guide normal --method otmdr --epochs 30 --out runs/bnn
    otmdr train --guide delta --method otmdr --data-robust trades --eps 0.1 --beta 6
    otmdr train --resume runs/bnn
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..config import (
    Experiment,
    ExperimentConfig,
    build_experiment,
    evaluate_experiment,
    train_experiment,
)
from ..names import DATA_ROBUST_PARAMS
from .rundir import (
    config_from_args,
    environment,
    load_run,
    mean_step_ms,
    print_metrics,
    save_run_checkpoint,
    write_evaluation,
    write_json,
)

__all__ = ["run"]


def _start(args: argparse.Namespace) -> tuple[Experiment, Path, int, int, list[dict]]:
    """A new run from the flags, or (``--resume RUN_DIR``) the run saved in a run directory."""
    if args.resume is not None:
        experiment, checkpoint = load_run(args.resume, args.device)
        history = list(checkpoint.extra["history"])
        return experiment, args.resume, checkpoint.epoch, checkpoint.step, history
    config = config_from_args(
        args, guide=args.guide, method=args.method, seed=args.seed, data_robust=args.data_robust
    )
    name = f"{config.dataset}-{config.guide}-{config.method}"
    name += f"-{config.data_robust}" if config.data_robust != "none" else ""
    out = args.out or Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())
    return build_experiment(config), out, 0, 0, []


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
            "from; run the same command again",
            file=sys.stderr,
        )
    return 130


def _robust_settings(config: ExperimentConfig) -> str:
    """``data-robust trades eps=0.1 beta=6 `` (empty without a data-robust loss)."""
    if config.data_robust == "none":
        return ""
    names = DATA_ROBUST_PARAMS[config.data_robust]
    values = " ".join(f"{name}={getattr(config, name):g}" for name in names)
    return f"data-robust {config.data_robust} {values} "


def run(args: argparse.Namespace) -> int:
    """``otmdr train``: train, checkpoint every epoch, evaluate on test, write the run dir."""
    experiment, out, start_epoch, steps, history = _start(args)
    config = experiment.config
    if start_epoch:
        print(f"resuming {out} after epoch {start_epoch} of {config.epochs}")
    print(
        f"{config.dataset} {config.model} {config.guide} {config.method} "
        f"rho={config.rho if config.method != 'svi' else '-'} "
        f"{_robust_settings(config)}"
        f"{config.optimizer} lr={config.lr} {config.schedule} on {config.device} -> {out}"
    )

    def checkpoint(stats, record) -> None:
        nonlocal steps
        steps += stats.steps
        history.append(record)
        save_run_checkpoint(out / "checkpoint.pt", experiment, record["epoch"], steps, history)

    start = time.perf_counter()
    log, progress = (None, False) if args.quiet else (print, None)
    try:
        train_experiment(
            experiment, log=log, on_epoch=checkpoint, start_epoch=start_epoch, progress=progress
        )
    except KeyboardInterrupt:
        return _interrupted(out, history)
    train_seconds = time.perf_counter() - start
    write_json(out / "history.json", history)
    result = evaluate_experiment(experiment)
    step_ms = mean_step_ms(history)
    timing = {"step_ms": step_ms, "train_seconds": train_seconds, "steps": steps}
    write_evaluation(out, "metrics", "", result, {"split": "test", **timing, **environment()})
    result.to_datatree().to_netcdf(out / "tree.nc")
    print(f"test ({len(result.labels)} examples, {result.num_draws} draws), {step_ms:.1f} ms/step:")
    print_metrics(result.metrics)
    print(f"run directory: {out}")
    return 0
