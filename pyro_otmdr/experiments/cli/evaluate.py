"""``otmdr evaluate RUN_DIR``: evaluate a saved run again, out of distribution and under shift.

Writes ``evaluation-<split>[-ood-<name>].json`` and its calibration plots; with ``--shift``, also
``shift.json`` and ``shift.png`` (accuracy, NLL and ECE against severity, one line per shift)
and the group ``shift`` of the run's ``tree.nc``.

Command line::

    otmdr evaluate runs/bnn --split val
    otmdr evaluate runs/bnn --ood fakedata --shift gaussian_noise,rotation --severity 1,3,5
"""

from __future__ import annotations

import argparse

from ..experiment import ood_inputs
from ..runs import evaluate_experiment, shift_experiment
from .parser import UsageError
from .rundir import (
    add_to_tree,
    environment,
    load_run,
    print_metrics,
    print_target_units,
    read_tree,
    require_run,
    target_units,
    write_evaluation,
    write_json,
    write_plot,
)
from .runlock import run_lock

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """``otmdr evaluate RUN_DIR``: rebuild, load the checkpoint, evaluate, write JSON and PNGs."""
    with run_lock(require_run(args.run_dir), "evaluate"):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    if args.shift and (args.run_dir / "tree.nc").is_file():
        read_tree(args.run_dir / "tree.nc")  # a damaged tree stops the command before the work
    experiment, checkpoint = load_run(args.run_dir, args.device)
    if experiment.is_regression and args.shift:
        raise UsageError(
            f"--shift corrupts the inputs of image classifiers; {experiment.config.dataset} is a "
            "regression data set: evaluate it without --shift"
        )
    x_ood = None if args.ood is None else ood_inputs(experiment, args.ood)
    result = evaluate_experiment(experiment, args.split, x_ood=x_ood, num_samples=args.num_samples)
    suffix = f"-{args.split}" + (f"-ood-{args.ood}" if args.ood else "")
    extra = {"split": args.split, "ood": args.ood, "epoch": checkpoint.epoch}
    extra.update(target_units(experiment))
    write_evaluation(args.run_dir, "evaluation", suffix, result, {**extra, **environment()})
    print(f"{args.run_dir} after epoch {checkpoint.epoch}, {args.split} split"
          + (f", OOD {args.ood}" if args.ood else "") + ":")  # fmt: skip
    print_metrics(result.metrics)
    print_target_units(experiment, result.metrics)
    print(f"wrote {args.run_dir / f'evaluation{suffix}.json'} and calibration{suffix}.png")
    if args.shift:
        _shift(args, experiment, {"split": args.split, "epoch": checkpoint.epoch})
    return 0


def _shift(args: argparse.Namespace, experiment, extra: dict) -> None:
    """Evaluate under every shift and severity; write ``shift.json``, ``shift.png``, a group."""
    result = shift_experiment(
        experiment,
        args.split,
        shifts=args.shift,
        severities=args.severity,
        num_samples=args.num_samples,
        progress=False if args.quiet else None,
    )
    write_json(args.run_dir / "shift.json", {**extra, **result.to_dict(), **environment()})
    write_plot(args.run_dir / "shift.png", result.plot)
    if (args.run_dir / "tree.nc").is_file():
        add_to_tree(args.run_dir / "tree.nc", result.to_dataset(), "shift")
    print("under shift (accuracy / NLL / ECE):")
    for shift, per in result.metrics.items():
        cells = [f"{s}: {m['accuracy']:.3f}/{m['nll']:.3f}/{m['ece']:.3f}" for s, m in per.items()]
        print(f"  {shift:<15} " + "  ".join(cells))
    mean = result.mean_over_shifts()
    print(f"  mean over shifts and severities: accuracy {mean['accuracy']:.4f}, "
          f"NLL {mean['nll']:.4f}, ECE {mean['ece']:.4f}")  # fmt: skip
    print(f"wrote {args.run_dir / 'shift.json'}, shift.png and the group 'shift' of tree.nc")
