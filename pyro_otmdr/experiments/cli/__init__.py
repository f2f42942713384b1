"""The ``otmdr`` command: train or fine-tune one run, evaluate or attack a run again, compare.

``otmdr train`` builds an :class:`~pyro_otmdr.experiments.ExperimentConfig` from its flags, trains
with a progress bar and per-epoch lines and writes a run directory (``--out``)::

    config.json        the resolved configuration (ExperimentConfig.from_dict reads it)
    history.json       loss, monitored accuracy, learning rate and step time per epoch
    checkpoint.pt      param store, optimiser and loss state, epoch, step, config (every epoch)
    metrics.json       test metrics, mean step time, versions
    tree.nc            the ArviZ DataTree of the test predictive (az.from_netcdf reads it)
    calibration.png    reliability diagram, and calibration_pava.png (ArviZ PAV plot); for a
                       regression data set (diabetes) the coverage calibration curve and
                       calibration_pit.png (ArviZ PIT plot)

Ctrl-C stops it with exit status 130 and prints the ``otmdr train --resume RUN_DIR`` command
that continues from the last checkpoint. ``otmdr finetune RUN_DIR --out NEW_DIR`` trains a new
run that starts from a finished run's final parameters (its config.json with the flags given on
top; ``parent.json`` records the parent). ``otmdr evaluate RUN_DIR`` rebuilds the run from
``config.json`` and ``checkpoint.pt`` and evaluates it again (``--split val|test``, ``--ood
fakedata|DATASET``, ``--shift`` for shifted test sets). ``otmdr attack RUN_DIR`` measures its
robust accuracy under Wasserstein and pointwise attacks. ``otmdr compare`` trains a grid of
guides x methods x radii x seeds (resuming a half-finished grid), chooses rho by validation NLL
and writes a table, a figure and a CSV.

Only the parser is imported to parse the flags; a command's module (and torch, Pyro, ArviZ) is
imported when the command runs, so ``otmdr --help`` answers at once.

Command line::

    otmdr train --guide normal --method otmdr --epochs 30 --out runs/bnn
    otmdr finetune runs/bnn --data-robust wdat --epochs 5 --out runs/bnn-wdat
    otmdr evaluate runs/bnn --ood fakedata --shift gaussian_noise,rotation
    otmdr attack runs/bnn --threat w2-linf,linf --budget 0.02,0.05,0.1
    otmdr compare --guides delta,normal --methods svi,otmdr --rho 0.01,0.05 --seeds 3
    python -m pyro_otmdr train --help
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence

from .parser import RunError, UsageError, build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otmdr`` command line; returns the exit status.

    Bad flags, and argument values that only the run can check, exit with status 2 and an
    argparse-style message. Every other expected failure (a run directory that is missing,
    damaged, locked, read-only or does not match its checkpoint, a full disk, a data set that is
    missing, a non-finite loss) prints one line ``otmdr COMMAND: error: ...`` and exits with
    status 1; ``--debug`` shows the traceback as well. Ctrl-C exits with status 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    try:
        command = importlib.import_module(f"{__name__}.{args.module}")
        return command.run(args)
    except UsageError as err:
        if args.debug:
            traceback.print_exc()
        subparser.error(str(err))
    except (OSError, RuntimeError, ValueError, ArithmeticError, RunError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"otmdr {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\notmdr {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
