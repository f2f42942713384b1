"""``otmdr finetune RUN_DIR --out NEW_DIR``: a new run that starts from a finished run.

The new run's configuration is ``RUN_DIR/config.json`` with the run flags given on top (only the
flags given: the others keep the parent's values); it starts from ``RUN_DIR``'s final guide
parameters with a fresh optimiser and schedule, and is trained, checkpointed and evaluated like
``otmdr train``'s, into ``NEW_DIR``, which also gets ``parent.json``: the parent's path, the
SHA-256 of its ``checkpoint.pt``, ``reinit_last`` and ``weight_noise``. ``RUN_DIR`` is only read.
``--reinit-last`` re-initialises the last linear layer; ``--weight-noise STD`` adds
``N(0, (STD * std(w))^2)`` to every weight tensor ``w``, seeded by ``--seed``
(:func:`pyro_otmdr.experiments.finetune.start_from` gives the exact rules).

Ctrl-C stops it with exit status 130; ``otmdr train --resume NEW_DIR`` continues from the new
run's own last checkpoint.

Command line::

    otmdr train --data-robust at --out runs/at
    otmdr finetune runs/at --data-robust wdat --epochs 5 --out runs/at-wdat
    otmdr finetune runs/at --reinit-last --lr 1e-3 --epochs 5 --out runs/at-head
    otmdr finetune runs/at --weight-noise 0.01 --method otmdr --out runs/at-noisy
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from ..config import ExperimentConfig
from ..finetune import PARENT_FILE, finetune
from .rundir import print_metrics, print_target_units
from .train import describe_run

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """``otmdr finetune``: fine-tune ``RUN_DIR`` into ``--out``, print the metrics."""
    given = vars(args)
    overrides = {
        spec.name: given[spec.name] for spec in fields(ExperimentConfig) if spec.name in given
    }
    started: list = []

    def announce(experiment, record) -> None:
        started.append(experiment)
        config, out = experiment.config, args.out
        changes = []
        if record["reinit_last"]:
            changes.append(f"last layer {' '.join(record['reinit_sites'])} re-initialised")
        if record["weight_noise"]:
            changes.append(f"weight noise {record['weight_noise']:g} x std (seed {config.seed})")
        print(
            f"fine-tuning {args.run_dir} (after epoch {record['epoch']}, checkpoint sha256 "
            f"{record['checkpoint_sha256'][:12]}){''.join(f', {c}' for c in changes)}"
        )
        print(describe_run(config, out))

    log, progress = (None, False) if args.quiet else (print, None)
    try:
        metrics = finetune(
            args.run_dir,
            args.out,
            reinit_last=args.reinit_last,
            weight_noise=args.weight_noise,
            overwrite=args.overwrite,
            log=log,
            progress=progress,
            skip_nonfinite=args.skip_nonfinite,
            on_start=announce,
            **overrides,
        )
    except KeyboardInterrupt:
        return _interrupted(args.out, bool(started))
    experiment = started[0]
    step_ms = json.loads((args.out / "metrics.json").read_text())["step_ms"]
    print(f"test ({len(experiment.split_tensors('test')[1])} examples), {step_ms:.1f} ms/step:")
    print_metrics(metrics)
    print_target_units(experiment, metrics)
    print(f"parent recorded in {args.out / PARENT_FILE}")
    print(f"run directory: {args.out}")
    return 0


def _interrupted(out: Path, started: bool) -> int:
    """Say where the last checkpoint is and how to resume; the exit status of Ctrl-C."""
    if not started:
        message = "interrupted before the fine-tuning started: nothing to resume"
    elif (out / "checkpoint.pt").is_file():
        message = (
            f"interrupted: the last checkpoint is {out / 'checkpoint.pt'}; continue with:\n"
            f"  otmdr train --resume {shlex.quote(str(out))}"
        )
    else:
        message = (
            "interrupted before the first epoch ended: there is no checkpoint to resume from; "
            "run the same command again with --overwrite"
        )
    print(f"\n{message}", file=sys.stderr)
    return 130
