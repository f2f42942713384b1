"""``otmdr attack RUN_DIR``: robust accuracy of a saved run under Wasserstein and pointwise attacks.

Writes ``robustness.json`` and ``robustness.png`` and adds the group ``robustness`` to the run's
``tree.nc``.

Command line::

    otmdr attack runs/bnn --threat w2-linf,linf --budget 0.02,0.05,0.1
"""

from __future__ import annotations

import argparse

from ..runs import attack_experiment
from .rundir import (
    add_to_tree,
    environment,
    load_run,
    read_tree,
    require_run,
    write_json,
    write_plot,
)
from .runlock import run_lock

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """``otmdr attack RUN_DIR``: robustness report, ``robustness.json`` and ``robustness.png``."""
    with run_lock(require_run(args.run_dir), "attack"):
        return _attack(args)


def _attack(args: argparse.Namespace) -> int:
    tree_path = args.run_dir / "tree.nc"
    if tree_path.is_file():
        read_tree(tree_path)  # a damaged tree stops the command before the attacks run
    experiment, checkpoint = load_run(args.run_dir, args.device)
    report = attack_experiment(
        experiment,
        args.split,
        threats=args.threat,
        budgets=args.budget,
        num_samples=args.num_samples,
        steps=args.steps,
        progress=False if args.quiet else None,
    )
    extra = {"split": args.split, "epoch": checkpoint.epoch, **environment()}
    write_json(args.run_dir / "robustness.json", {**extra, **report.to_dict()})
    write_plot(args.run_dir / "robustness.png", report.plot)
    if tree_path.is_file():
        group = "robustness" if args.split == "test" else f"robustness_{args.split}"
        add_to_tree(tree_path, report.to_dataset(), group)
    print(f"{args.run_dir} after epoch {checkpoint.epoch}, {args.split} split "
          f"({len(experiment.split_tensors(args.split)[1])} examples, "
          f"{report.settings['num_draws']} draws, {report.settings['protocol']}):")  # fmt: skip
    print(report.table())
    print(f"wrote {args.run_dir / 'robustness.json'}, robustness.png and a group in tree.nc")
    return 0
