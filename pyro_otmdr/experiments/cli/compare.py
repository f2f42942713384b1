"""``otmdr compare``: train guides x methods x data-robust losses x radii x seeds, choose rho on
validation, tabulate.

Each run's results go to ``OUT/runs/<guide>-<method>[-<data-robust>]-rho<rho>-seed<seed>.json``
as soon as it ends (the data-robust loss is named only when it is not ``none``, so the results
folders of earlier versions resume), so an interrupted grid resumes where it stopped (a run is
skipped when its file holds the same configuration and the columns asked for). With several
``--rho`` values, the radius of each guide, method and data-robust loss is the one with the
lowest mean VALIDATION NLL over seeds; the tables report the test metrics of that radius only.
``--shift`` adds the mean over shifts and severities of accuracy, NLL and ECE.

``--data-robust none,trades,armor`` trains each run also with those data-robust losses (``--eps``,
``--delta``, ``--beta``, ``--budget`` set them). With anything but ``none`` there, or with
``--robust-budget B`` (default 0.1), every run is attacked on the test split at budget ``B``:
W-PGD (ReDLR loss) in the W2 ball with the linf cost and PGD (CE loss, random start, one
restart) in the linf ball, ``--attack-steps`` iterates each (50), as ``otmdr attack`` does, an
AutoNormal through ``--attack-samples`` posterior draws (default ``--num-samples``). The
columns ``robust_w2_linf`` and ``robust_linf`` hold the robust accuracy; for a guide that
samples (AutoNormal) it is the fresh-draw re-evaluation of the attacked inputs. A BNN's attacks
cost tens of times a point estimate's at 32 draws (every iterate runs every draw).

Writes ``results.md`` (the command, the chosen-rho table, then every radius), ``runs.json`` and
``compare.csv`` (one row per run) and ``compare.png`` (one panel per metric, methods side by
side per guide, mean and standard error over seeds).

Command line::

    otmdr compare --guides delta,normal --methods svi,sam,otmdr --rho 0.01,0.05 --seeds 3
    otmdr compare --guides delta --methods svi,otmdr --data-robust none,trades,armor --seeds 3
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
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...workflow.outputs import atomic_path, write_text
from ..config import ExperimentConfig
from ..experiment import build_experiment
from ..names import DATA_ROBUST_PARAMS, REGRESSION_DATASETS
from ..runs import attack_experiment, evaluate_experiment, shift_experiment, train_experiment
from .parser import UsageError
from .rundir import config_from_args, mean_step_ms, write_json, write_plot

__all__ = ["DEFAULT_ROBUST_BUDGET", "ROBUST_THREATS", "markdown_table", "run", "select_rho"]

METRICS = (("accuracy", "accuracy"), ("nll", "NLL"), ("brier", "Brier"), ("ece", "ECE"))
SHIFT_METRICS = (("shift_accuracy", "acc (shift)"), ("shift_nll", "NLL (shift)"))
SHIFT_METRICS += (("shift_ece", "ECE (shift)"),)
ROBUST_METRICS = (("robust_w2_linf", "robust acc W2-linf"), ("robust_linf", "robust acc linf"))

#: The threats of the robust columns, with the row key of each.
ROBUST_THREATS: dict[str, str] = {"w2-linf": "robust_w2_linf", "linf": "robust_linf"}
#: The attacks' budget when ``--robust-budget`` is not given, in units of the ``[0, 1]`` box.
DEFAULT_ROBUST_BUDGET = 0.1
#: The keys of a row that the robust columns add (the settings, the results, the time).
_ROBUST_KEYS = ("robust_budget", "attack_steps", "attack_samples", "robust_fresh_draws")
_ROBUST_KEYS += (*ROBUST_THREATS.values(), "attack_seconds")

Cell = tuple[str, str, str, str]  # guide, method, data-robust loss, geometry


def _cell(row: dict) -> Cell:
    """The table cell of a row; rows written before the data-robust losses are ``none``, before
    the geometries ``global``."""
    return (
        row["guide"],
        row["method"],
        row.get("data_robust", "none"),
        row.get("geometry", "global"),
    )


def _grid(args: argparse.Namespace) -> list[ExperimentConfig]:
    rhos = list(args.rho) if args.rho else [None]
    if args.dataset in REGRESSION_DATASETS:
        raise UsageError(
            f"otmdr compare tabulates classification metrics (accuracy, ECE); {args.dataset} is a "
            f"regression data set: train its runs with 'otmdr train --dataset {args.dataset}'"
        )
    if len(rhos) > 1 and args.dataset in ("cifar10", "cifar100") and args.val_size == 0:
        raise UsageError("choosing among several --rho needs a validation split: --val-size N")
    configs = []
    for guide in args.guides:
        for method in args.methods:
            for data_robust in dict.fromkeys(args.data_robust):
                geometries = _geometries_of(args.geometry, guide, method)
                for geometry in geometries:
                    for rho in rhos if method != "svi" else [None]:
                        for seed in range(args.seeds):
                            grid = {"guide": guide, "method": method, "seed": seed, "rho": rho}
                            grid.update(data_robust=data_robust, geometry=geometry)
                            configs.append(config_from_args(args, **grid))
    return configs


def _geometries_of(geometries: Sequence[str], guide: str, method: str) -> list[str]:
    """The geometries a cell spans: none but ``global`` for plain SVI (no ascent move), and
    ``posterior`` for the Gaussian guide only (the others have no scales)."""
    if method == "svi":
        return ["global"]
    return [g for g in dict.fromkeys(geometries) if g != "posterior" or guide == "normal"]


def _robust_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The attacks of the robust columns, or ``None`` when they are not asked for."""
    wanted = args.robust_budget is not None or any(d != "none" for d in args.data_robust)
    if not wanted:
        return None
    budget = DEFAULT_ROBUST_BUDGET if args.robust_budget is None else args.robust_budget
    samples = args.num_samples if args.attack_samples is None else args.attack_samples
    return {"robust_budget": budget, "attack_steps": args.attack_steps, "attack_samples": samples}


def _run_file(out: Path, config: ExperimentConfig) -> Path:
    rho = "-" if config.method == "svi" else f"{config.rho:g}"
    robust = "" if config.data_robust == "none" else f"-{config.data_robust}"
    robust += "" if config.geometry == "global" else f"-{config.geometry}"
    name = f"{config.guide}-{config.method}{robust}-rho{rho}-seed{config.seed}.json"
    return out / "runs" / name


def _comparable(config: ExperimentConfig) -> ExperimentConfig:
    """The configuration with the data-robust parameters its loss does not use at their
    defaults: a run without a data-robust loss is the same run whatever ``--eps`` says."""
    used = DATA_ROBUST_PARAMS[config.data_robust]
    params = {name for names in DATA_ROBUST_PARAMS.values() for name in names}
    unused = {name: getattr(ExperimentConfig, name) for name in params}
    return replace(config, **{k: v for k, v in unused.items() if k not in used})


def _saved_row(path: Path, config: ExperimentConfig, robust: dict | None = None) -> dict | None:
    """The row of a finished run with this very configuration, or ``None``.

    A configuration saved before a field existed reads with the field's default. With
    ``robust`` settings the row must hold robust accuracy measured with those very settings.
    """
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        same = _comparable(ExperimentConfig.from_dict(saved["config"])) == _comparable(config)
        row = saved["row"]
    except (ValueError, TypeError, KeyError):
        return None
    if not same or not isinstance(row, dict):
        return None
    if robust is not None and any(row.get(k) != v for k, v in robust.items()):
        return None
    if robust is None:  # robust columns of an earlier command that asked for them: not now
        row = {k: v for k, v in row.items() if k not in _ROBUST_KEYS}
    row.setdefault("data_robust", "none")
    row.setdefault("geometry", "global")
    return row


def _step_seconds(history: Sequence[dict], train_seconds: float) -> float:
    """Mean seconds per training step: :func:`mean_step_ms` of the epochs, or the training's wall
    time over its steps when no step was timed."""
    if any(not math.isnan(r["step_ms"]) for r in history):
        return mean_step_ms(history) / 1e3
    return train_seconds / max(1, sum(r["steps"] for r in history))


def _robust_columns(experiment, robust: dict) -> dict[str, Any]:
    """Robust accuracy on the test split at the one budget, under each of ROBUST_THREATS."""
    start = time.perf_counter()
    report = attack_experiment(
        experiment,
        "test",
        threats=tuple(ROBUST_THREATS),
        budgets=(robust["robust_budget"],),
        steps=robust["attack_steps"],
        num_samples=robust["attack_samples"],
        progress=False,
    )
    fresh = report.robust_accuracy_fresh  # a guide that samples: the fresh-draw numbers
    accuracy = report.robust_accuracy if fresh is None else fresh
    columns: dict[str, Any] = dict(robust)
    columns.update({key: accuracy[threat][0] for threat, key in ROBUST_THREATS.items()})
    columns["robust_fresh_draws"] = fresh is not None
    columns["attack_seconds"] = time.perf_counter() - start
    return columns


def _train_one(config: ExperimentConfig, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    experiment = build_experiment(config)
    history = train_experiment(experiment, progress=False)
    train_seconds = time.perf_counter() - start
    row = {
        "guide": config.guide,
        "method": config.method,
        "data_robust": config.data_robust,
        "geometry": config.geometry,
        "seed": config.seed,
        "rho": config.rho if config.method != "svi" else None,
        **evaluate_experiment(experiment).metrics,
    }
    if experiment.splits.val is not None:
        row["val_nll"] = evaluate_experiment(experiment, "val").metrics["nll"]
    if args.shift:
        shifted = shift_experiment(experiment, "test", shifts=args.shift, severities=args.severity)
        row.update({f"shift_{k}": v for k, v in shifted.mean_over_shifts().items()})
    robust = _robust_settings(args)
    if robust is not None:
        row.update(_robust_columns(experiment, robust))
    row["step_s"] = _step_seconds(history, train_seconds)
    row["step_ms"] = 1e3 * row["step_s"]
    row["train_seconds"] = train_seconds
    row["seconds"] = time.perf_counter() - start
    return row


def _run_grid(configs: list[ExperimentConfig], args: argparse.Namespace) -> list[dict]:
    rows = []
    quiet = True if args.quiet else None  # tqdm: None = off unless a terminal
    robust = _robust_settings(args)
    for config in tqdm(configs, desc="compare", unit="run", disable=quiet):
        path = _run_file(args.out, config)
        row = _saved_row(path, config, robust)
        if row is None:
            row = _train_one(config, args)
            write_json(path, {"config": config.to_dict(), "row": row})
            done = "trained"
        else:
            done = "kept from an earlier run"
        rows.append(row)
        if not args.quiet:
            data = "" if config.data_robust == "none" else f"{config.data_robust} "
            attacked = (
                f"rob W2-linf {row['robust_w2_linf']:.4f}  rob linf {row['robust_linf']:.4f}  "
                if robust is not None
                else ""
            )
            tqdm.write(
                f"[{len(rows)}/{len(configs)}] {config.guide:<8} {config.method:<6} {data}"
                f"rho {row['rho'] if row['rho'] is not None else '-'} seed {config.seed}: "
                f"acc {row['accuracy']:.4f}  nll {row['nll']:.4f}  ece {row['ece']:.4f}  "
                f"{attacked}{row['step_ms']:.1f} ms/step  ({done})"
            )
    return rows


def select_rho(rows: Sequence[dict]) -> dict[Cell, float | None]:
    """Per guide, method, data-robust loss and geometry, the rho with the lowest mean validation
    NLL over seeds; keys are ``(guide, method, data_robust, geometry)`` (``"none"`` and
    ``"global"`` for a row without them).

    Only one radius (or none, for plain SVI): that one. Several without ``val_nll``: an error.

    Usage::

        from pyro_otmdr.experiments.cli.compare import select_rho

        rows = [
            {"guide": "delta", "method": "otmdr", "rho": rho, "seed": 0, "val_nll": nll}
            for rho, nll in ((0.01, 0.31), (0.02, 0.29), (0.05, 0.35))
        ]
        assert select_rho(rows)[("delta", "otmdr", "none", "global")] == 0.02   # lowest val NLL
    """
    chosen: dict[Cell, float | None] = {}
    for key in dict.fromkeys(_cell(r) for r in rows):
        cell = [r for r in rows if _cell(r) == key]
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
    """The metrics every row holds: the shift and the robust columns only when all have them."""
    shift = SHIFT_METRICS if all("shift_nll" in r for r in rows) else ()
    if not all("robust_linf" in r for r in rows):
        return METRICS + shift
    budget = f" ({rows[0]['robust_budget']:g})"
    return METRICS + shift + tuple((key, label + budget) for key, label in ROBUST_METRICS)


def _robust_note(rows: Sequence[dict]) -> str:
    """How the robust columns were measured, when there are any."""
    if not all("robust_linf" in r for r in rows):
        return ""
    budget, steps = rows[0]["robust_budget"], rows[0]["attack_steps"]
    draws = rows[0].get("attack_samples")
    fresh = f" (sampled guides: attacked through {draws} draws, re-evaluated with fresh draws)"
    return (
        f"robust accuracy on the test split at budget {budget:g} of the [0, 1] box: W-PGD "
        f"(ReDLR) in the W2 ball with the linf cost and PGD (CE, random start) in the linf ball, "
        f"{steps} steps each" + (fresh if any(r.get("robust_fresh_draws") for r in rows) else "")
    )


def markdown_table(
    rows: Sequence[dict],
    guides: Sequence[str],
    methods: Sequence[str],
    chosen: dict[Cell, float | None] | None = None,
    every_rho: bool = False,
) -> str:
    """Mean ± sample std over seeds of each metric and the step time, one line per cell.

    A cell is a guide, a method, a data-robust loss and a geometry (the columns
    ``data-robust`` and ``geometry`` are shown when a row has one other than the default).
    Without ``every_rho`` only the chosen radius of each cell is listed; with it, every
    radius, the chosen one marked ``*`` (and the mean validation NLL shown when known). With
    robust columns the attack settings are stated below the table.

    Usage::

        from pyro_otmdr.experiments.cli.compare import markdown_table

        rows = [
            {"guide": "delta", "method": method, "rho": rho, "seed": seed, "accuracy": acc,
             "nll": 0.3, "brier": 0.1, "ece": 0.02, "step_ms": 5.0}
            for method, rho, acc in (("svi", None, 0.95), ("otmdr", 0.05, 0.96))
            for seed in (0, 1)
        ]
        print(markdown_table(rows, ["delta"], ["svi", "otmdr"]))  # mean +- std over the seeds
    """
    chosen = select_rho(rows) if chosen is None else chosen
    columns = _columns(rows)
    with_val = every_rho and all("val_nll" in r for r in rows)
    losses = list(dict.fromkeys(_cell(r)[2] for r in rows))
    geometries = list(dict.fromkeys(_cell(r)[3] for r in rows))
    with_data, with_geometry = losses != ["none"], geometries != ["global"]
    header = ["guide", "method", *(["data-robust"] if with_data else [])]
    header += [*(["geometry"] if with_geometry else []), "rho"]
    header += [*(label for _, label in columns), "step (ms)"]
    header += ["val NLL"] if with_val else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seeds = 0
    for guide in guides:
        for method in methods:
            for key in [(guide, method, loss, g) for loss in losses for g in geometries]:
                cell = [r for r in rows if _cell(r) == key]
                for rho in dict.fromkeys(r["rho"] for r in cell):
                    if not every_rho and rho != chosen[key]:
                        continue
                    runs = [r for r in cell if r["rho"] == rho]
                    seeds = len(runs)
                    marked = every_rho and rho == chosen[key] and rho is not None
                    label = "-" if rho is None else f"{rho:g}" + ("*" if marked else "")
                    values = [_mean_std([r[k] for r in runs], 4) for k, _ in columns]
                    values.append(_mean_std([r["step_ms"] for r in runs], 1))
                    if with_val:
                        values.append(f"{statistics.fmean(r['val_nll'] for r in runs):.4f}")
                    names = [guide, method, *([key[2]] if with_data else [])]
                    names += [*([key[3]] if with_geometry else []), label]
                    lines.append("| " + " | ".join([*names, *values]) + " |")
    note = _robust_note(rows)
    note = f"; {note}" if note else ""
    return "\n".join(lines) + f"\n\nmean ± sample std over {seeds} seeds{note}\n"


def plot_comparison(rows: Sequence[dict], chosen: dict, path: Path, *, dpi: int = 80) -> Path:
    """One panel per metric: per guide, a bar per method and data-robust loss (chosen rho),
    mean ± standard error."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [(k, label) for k, label in _columns(rows) if k != "brier"]
    guides = list(dict.fromkeys(r["guide"] for r in rows))
    methods = list(dict.fromkeys(_cell(r)[1:] for r in rows))  # (method, loss, geometry)
    legend_rows = math.ceil(len(methods) / 6)
    fig = Figure(figsize=(3.2 * len(columns), 3.4 + 0.25 * legend_rows))
    FigureCanvasAgg(fig)
    width = 0.8 / len(methods)
    for ax, (key, label) in zip(fig.subplots(1, len(columns)), columns, strict=True):
        for i, (method, loss, geometry) in enumerate(methods):
            means, errors = [], []
            for guide in guides:
                values = [
                    r[key]
                    for r in rows
                    if _cell(r) == (guide, method, loss, geometry)
                    and r["rho"] == chosen.get((guide, method, loss, geometry))
                ]
                means.append(statistics.fmean(values) if values else math.nan)
                sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0
                errors.append(sem)
            x = np.arange(len(guides)) + (i - (len(methods) - 1) / 2) * width
            label_of = method if loss == "none" else f"{method}+{loss}"
            label_of += "" if geometry == "global" else f" ({geometry})"
            ax.bar(x, means, width, yerr=errors, capsize=3, label=label_of)
        ax.set_xticks(np.arange(len(guides)), guides)
        ax.set_title(label)
        low = min(r[key] for r in rows)
        high = max(r[key] for r in rows)
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(methods), 6), fontsize="small")
    fig.suptitle("mean ± standard error over seeds, rho chosen on validation NLL")
    fig.tight_layout(rect=(0, 0.07 * legend_rows, 1, 1))  # the legend below the panels
    fig.savefig(path, dpi=dpi)
    return path


def _write_outputs(rows: list[dict], args: argparse.Namespace) -> str:
    chosen = select_rho(rows)
    table = markdown_table(rows, args.guides, args.methods, chosen)
    command = " ".join(["otmdr", *sys.argv[1:]])
    text = f"```\n$ {command}\n```\n\nTest metrics at the rho chosen by validation NLL:\n\n{table}"
    if any(len({r["rho"] for r in rows if _cell(r) == k}) > 1 for k in chosen):
        every = markdown_table(rows, args.guides, args.methods, chosen, every_rho=True)
        text += f"\nEvery radius (* the chosen one):\n\n{every}"
    write_text(args.out / "results.md", text)
    write_json(args.out / "runs.json", rows)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(args.out / "compare.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    write_plot(args.out / "compare.png", lambda tmp: plot_comparison(rows, chosen, tmp))
    return table


def run(args: argparse.Namespace) -> int:
    """``otmdr compare``: every guide x method x rho x seed, then tables, a CSV and a figure."""
    configs = _grid(args)
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    rows = _run_grid(configs, args)
    table = _write_outputs(rows, args)
    print(f"\n{table}\nwrote {args.out / 'results.md'}, runs.json, compare.csv and compare.png")
    return 0
