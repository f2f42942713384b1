"""``otmdr compare``: train guides x methods x radii x seeds, choose rho on validation, tabulate.

Each run's results go to ``OUT/runs/<guide>-<method>-rho<rho>-seed<seed>.json`` as soon as it
ends, so an interrupted grid resumes where it stopped (a run is skipped when its file holds the
same configuration). With several ``--rho`` values, the radius of each guide and method is the
one with the lowest mean VALIDATION NLL over seeds; the tables report the test metrics of that
radius only. ``--shift`` adds the mean over shifts and severities of accuracy, NLL and ECE.

Writes ``results.md`` (the command, the chosen-rho table, then every radius), ``runs.json`` and
``compare.csv`` (one row per run) and ``compare.png`` (one panel per metric, methods side by
side per guide, mean and standard error over seeds).

Usage::

    otmdr compare --guides delta,normal --methods svi,sam,otmdr --rho 0.01,0.05 --seeds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..config import (
    ExperimentConfig,
    build_experiment,
    evaluate_experiment,
    shift_experiment,
    train_experiment,
)
from .parser import UsageError
from .rundir import config_from_args, mean_step_ms, write_json

__all__ = ["markdown_table", "run", "select_rho"]

METRICS = (("accuracy", "accuracy"), ("nll", "NLL"), ("brier", "Brier"), ("ece", "ECE"))
SHIFT_METRICS = (("shift_accuracy", "acc (shift)"), ("shift_nll", "NLL (shift)"))
SHIFT_METRICS += (("shift_ece", "ECE (shift)"),)


def _grid(args: argparse.Namespace) -> list[ExperimentConfig]:
    rhos = list(args.rho) if args.rho else [None]
    if len(rhos) > 1 and args.dataset in ("cifar10", "cifar100") and args.val_size == 0:
        raise UsageError("choosing among several --rho needs a validation split: --val-size N")
    configs = []
    for guide in args.guides:
        for method in args.methods:
            for rho in rhos if method != "svi" else [None]:
                for seed in range(args.seeds):
                    grid = {"guide": guide, "method": method, "seed": seed, "rho": rho}
                    configs.append(config_from_args(args, **grid))
    return configs


def _run_file(out: Path, config: ExperimentConfig) -> Path:
    rho = "-" if config.method == "svi" else f"{config.rho:g}"
    return out / "runs" / f"{config.guide}-{config.method}-rho{rho}-seed{config.seed}.json"


def _saved_row(path: Path, config: ExperimentConfig) -> dict | None:
    """The row of a finished run with this very configuration, or ``None``."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return None
    return saved["row"] if saved.get("config") == config.to_dict() else None


def _train_one(config: ExperimentConfig, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    experiment = build_experiment(config)
    history = train_experiment(experiment, progress=False)
    row = {
        "guide": config.guide,
        "method": config.method,
        "seed": config.seed,
        "rho": config.rho if config.method != "svi" else None,
        **evaluate_experiment(experiment).metrics,
    }
    if experiment.splits.val is not None:
        row["val_nll"] = evaluate_experiment(experiment, "val").metrics["nll"]
    if args.shift:
        shifted = shift_experiment(experiment, "test", shifts=args.shift, severities=args.severity)
        row.update({f"shift_{k}": v for k, v in shifted.mean_over_shifts().items()})
    row["step_ms"] = mean_step_ms(history)
    row["seconds"] = time.perf_counter() - start
    return row


def _run_grid(configs: list[ExperimentConfig], args: argparse.Namespace) -> list[dict]:
    rows = []
    quiet = True if args.quiet else None  # tqdm: None = off unless a terminal
    for config in tqdm(configs, desc="compare", unit="run", disable=quiet):
        path = _run_file(args.out, config)
        row = _saved_row(path, config)
        if row is None:
            row = _train_one(config, args)
            write_json(path, {"config": config.to_dict(), "row": row})
            done = "trained"
        else:
            done = "kept from an earlier run"
        rows.append(row)
        if not args.quiet:
            tqdm.write(
                f"[{len(rows)}/{len(configs)}] {config.guide:<8} {config.method:<6} "
                f"rho {row['rho'] if row['rho'] is not None else '-'} seed {config.seed}: "
                f"acc {row['accuracy']:.4f}  nll {row['nll']:.4f}  ece {row['ece']:.4f}  "
                f"{row['step_ms']:.1f} ms/step  ({done})"
            )
    return rows


def select_rho(rows: Sequence[dict]) -> dict[tuple[str, str], float | None]:
    """Per guide and method, the rho with the lowest mean validation NLL over seeds.

    Only one radius (or none, for plain SVI): that one. Several without ``val_nll``: an error.
    """
    chosen: dict[tuple[str, str], float | None] = {}
    for key in dict.fromkeys((r["guide"], r["method"]) for r in rows):
        cell = [r for r in rows if (r["guide"], r["method"]) == key]
        rhos = list(dict.fromkeys(r["rho"] for r in cell))
        if len(rhos) == 1:
            chosen[key] = rhos[0]
            continue
        if any("val_nll" not in r for r in cell):
            raise UsageError("choosing rho needs a validation split; this data set has none")
        chosen[key] = min(
            rhos, key=lambda rho: statistics.fmean(r["val_nll"] for r in cell if r["rho"] == rho)
        )
    return chosen


def _mean_std(values: Sequence[float], digits: int) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _columns(rows: Sequence[dict]) -> tuple[tuple[str, str], ...]:
    return METRICS + (SHIFT_METRICS if "shift_nll" in rows[0] else ())


def markdown_table(
    rows: Sequence[dict],
    guides: Sequence[str],
    methods: Sequence[str],
    chosen: dict[tuple[str, str], float | None] | None = None,
    every_rho: bool = False,
) -> str:
    """Mean ± sample std over seeds of each metric and the step time, one line per cell.

    Without ``every_rho`` only the chosen radius of each guide and method is listed; with it,
    every radius, the chosen one marked ``*`` (and the mean validation NLL shown when known).
    """
    chosen = select_rho(rows) if chosen is None else chosen
    columns = _columns(rows)
    with_val = every_rho and all("val_nll" in r for r in rows)
    header = ["guide", "method", "rho", *(label for _, label in columns), "step (ms)"]
    header += ["val NLL"] if with_val else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seeds = 0
    for guide in guides:
        for method in methods:
            cell = [r for r in rows if r["guide"] == guide and r["method"] == method]
            for rho in dict.fromkeys(r["rho"] for r in cell):
                if not every_rho and rho != chosen[(guide, method)]:
                    continue
                runs = [r for r in cell if r["rho"] == rho]
                seeds = len(runs)
                marked = every_rho and rho == chosen[(guide, method)] and rho is not None
                label = "-" if rho is None else f"{rho:g}" + ("*" if marked else "")
                values = [_mean_std([r[key] for r in runs], 4) for key, _ in columns]
                values.append(_mean_std([r["step_ms"] for r in runs], 1))
                if with_val:
                    values.append(f"{statistics.fmean(r['val_nll'] for r in runs):.4f}")
                lines.append("| " + " | ".join([guide, method, label, *values]) + " |")
    return "\n".join(lines) + f"\n\nmean ± sample std over {seeds} seeds\n"


def plot_comparison(rows: Sequence[dict], chosen: dict, path: Path, *, dpi: int = 80) -> Path:
    """One panel per metric: per guide, a bar per method (chosen rho), mean ± standard error."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [(k, label) for k, label in _columns(rows) if k != "brier"]
    guides = list(dict.fromkeys(r["guide"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(3.2 * len(columns), 3.4))
    FigureCanvasAgg(fig)
    width = 0.8 / len(methods)
    for ax, (key, label) in zip(fig.subplots(1, len(columns)), columns, strict=True):
        for i, method in enumerate(methods):
            means, errors = [], []
            for guide in guides:
                values = [
                    r[key]
                    for r in rows
                    if (r["guide"], r["method"]) == (guide, method)
                    and r["rho"] == chosen.get((guide, method))
                ]
                means.append(statistics.fmean(values) if values else math.nan)
                sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0
                errors.append(sem)
            x = np.arange(len(guides)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, means, width, yerr=errors, capsize=3, label=method)
        ax.set_xticks(np.arange(len(guides)), guides)
        ax.set_title(label)
        low = min(r[key] for r in rows)
        high = max(r[key] for r in rows)
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    fig.axes[0].legend(fontsize="small")
    fig.suptitle("mean ± standard error over seeds, rho chosen on validation NLL")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def _write_outputs(rows: list[dict], args: argparse.Namespace) -> str:
    chosen = select_rho(rows)
    table = markdown_table(rows, args.guides, args.methods, chosen)
    command = " ".join(["otmdr", *sys.argv[1:]])
    text = f"```\n$ {command}\n```\n\nTest metrics at the rho chosen by validation NLL:\n\n{table}"
    if any(len({r["rho"] for r in rows if (r["guide"], r["method"]) == k}) > 1 for k in chosen):
        every = markdown_table(rows, args.guides, args.methods, chosen, every_rho=True)
        text += f"\nEvery radius (* the chosen one):\n\n{every}"
    (args.out / "results.md").write_text(text)
    write_json(args.out / "runs.json", rows)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(args.out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot_comparison(rows, chosen, args.out / "compare.png")
    return table


def run(args: argparse.Namespace) -> int:
    """``otmdr compare``: every guide x method x rho x seed, then tables, a CSV and a figure."""
    configs = _grid(args)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    rows = _run_grid(configs, args)
    table = _write_outputs(rows, args)
    print(f"\n{table}\nwrote {args.out / 'results.md'}, runs.json, compare.csv and compare.png")
    return 0
