"""Run directories: the config from the flags, checkpoints, loading a run back, JSON and trees.

Every command that touches a run directory goes through here, so a run is written and read the
same way by ``train``, ``evaluate``, ``attack`` and ``compare``.

Usage::

    from pathlib import Path
    from pyro_otmdr.experiments.cli import main
    from pyro_otmdr.experiments.cli.rundir import load_run, write_json

    main(["train", "--epochs", "1", "--hidden", "16", "--out", "runs/demo", "--quiet",
          "--device", "cpu"])
    experiment, checkpoint = load_run(Path("runs/demo"), device="cpu")
    write_json(Path("runs/demo/extra.json"), {"epoch": checkpoint.epoch})
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyro
import torch

from ...bayes.wrapper import WrapperELBO
from ...evaluation import EvaluationResult
from ...workflow.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from ...workflow.outputs import (
    ChecksumError,
    atomic_path,
    read_verified,
    remove_temporaries,
    staged,
    write_text,
    write_verified,
)
from ..config import DEFAULT_LR, RUNTIME_KEYS, ExperimentConfig
from ..experiment import Experiment, build_experiment, warm_up
from ..runs import evaluate_experiment, train_experiment
from ..settings import setting_of
from .parser import RunError, UsageError

__all__ = [
    "DEFAULT_LR",
    "RUN_FILES",
    "add_to_tree",
    "clear_run",
    "config_from_args",
    "environment",
    "holds_run",
    "load_run",
    "mean_step_ms",
    "print_metrics",
    "print_target_units",
    "read_tree",
    "require_run",
    "resolve_device",
    "save_run_checkpoint",
    "target_units",
    "write_evaluation",
    "write_json",
    "write_plot",
    "write_tree",
]

#: The files of a run directory, as globs: what ``train``, ``finetune``, ``evaluate`` and
#: ``attack`` write. ``train --overwrite`` removes these (and only these) before it starts.
RUN_FILES = (
    "config.json",
    "parent.json",
    "checkpoint.pt",
    "history.json",
    "metrics.json",
    "tree.nc",
    "tree.nc.sha256",
    "calibration*.png",
    "evaluation-*.json",
    "robustness.json",
    "robustness.png",
    "shift.json",
    "shift.png",
)


def resolve_device(device: str | None) -> str:
    """``--device``: ``cuda`` when available if not given; a usage error for CUDA without one."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available here; use --device cpu")
    return device


def config_from_args(args: argparse.Namespace, **grid: Any) -> ExperimentConfig:
    """The resolved :class:`ExperimentConfig` of the run flags, with ``grid`` values on top
    (``guide``, ``method``, ``seed``, ``data_robust``, ``rho``: the values of a grid's cell).

    Each flag stores under its field's name (the parser builds them from the fields), so the
    mapping is the fields themselves; a flag left out whose setting computes its value from the
    others (``--lr``: the optimiser's) gets it here, and ``--device`` defaults to the GPU.
    """
    given = vars(args)
    values = {
        spec.name: given[spec.name] for spec in fields(ExperimentConfig) if spec.name in given
    }
    values.update(grid)
    for spec in fields(ExperimentConfig):
        omitted = setting_of(spec).omitted
        if omitted is not None and values.get(spec.name) is None:
            values[spec.name] = omitted(values)
    values["device"] = resolve_device(values["device"])
    try:
        return ExperimentConfig(**values).resolved()
    except ValueError as err:
        raise UsageError(str(err)) from None


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON at ``path`` (NaN allowed), written atomically."""
    write_text(path, json.dumps(value, indent=2, allow_nan=True) + "\n")


def holds_run(run_dir: Path) -> list[Path]:
    """The files of :data:`RUN_FILES` in ``run_dir`` (empty: no run there)."""
    if not run_dir.is_dir():
        return []
    return sorted({p for pattern in RUN_FILES for p in run_dir.glob(pattern) if p.is_file()})


def clear_run(run_dir: Path) -> list[Path]:
    """Remove a run's files (:data:`RUN_FILES`, attack and shift outputs included) and the
    temporary files of interrupted writes; other files stay. Returns what was removed."""
    found = holds_run(run_dir)
    for path in found:
        path.unlink()
    return found + remove_temporaries(run_dir)


def save_run_checkpoint(
    path: Path, experiment: Experiment, epoch: int, step: int, history: list[dict]
) -> None:
    """Write the training state atomically with :func:`~pyro_otmdr.save_checkpoint`.

    Besides the param store, optimiser, the loss's whole state (OT-MDR's generators, and nested
    in them a data-robust loss's, WDAT's running sensitivity estimate) and RNG states it keeps
    the config, its fingerprint, the history so far and the model's buffers (BatchNorm
    statistics) as ``extra``.
    """
    buffers = {name: value.detach() for name, value in experiment.model.named_buffers()}
    config = experiment.config
    extra = {"config": config.to_dict(), "config_fingerprint": config.fingerprint()}
    extra.update(history=history, model_buffers=buffers)
    save_checkpoint(
        path, optim=experiment.optim, loss=experiment.loss, epoch=epoch, step=step, extra=extra
    )


def require_run(run_dir: Path) -> Path:
    """``run_dir``, or a usage error if it holds no ``config.json`` and ``checkpoint.pt``."""
    for name in ("config.json", "checkpoint.pt"):
        if not (run_dir / name).is_file():
            raise UsageError(f"{run_dir} is not a run directory of 'otmdr train': no {name}")
    return run_dir


def load_run(run_dir: Path, device: str | None) -> tuple[Experiment, Checkpoint]:
    """Rebuild a run from ``config.json`` and load ``checkpoint.pt`` into it.

    :raises RunError: if ``config.json`` is unreadable, or does not match the configuration the
        checkpoint was trained with (naming the keys that differ), or the checkpoint is damaged.
    """
    device = resolve_device(device)
    require_run(run_dir)
    config_path, checkpoint_path = run_dir / "config.json", run_dir / "checkpoint.pt"
    config = _read_config(config_path)
    try:
        saved = load_checkpoint(checkpoint_path, param_store=False, restore_rng=False)
        _check_matches(config, saved.extra, config_path)
        experiment = build_experiment(replace(config, device=device))
        warm_up(experiment)  # the guide builds its parameters (and draws from the RNG) first
        # a run saved before the loss state nested a data-robust loss's: no loss state, or
        # OT-MDR's alone, and the objective's in extra["objective_state"]
        legacy = saved.extra.get("objective_state")
        loss = experiment.loss if saved.contents["loss"] is not None else None
        checkpoint = load_checkpoint(
            checkpoint_path, optim=experiment.optim, loss=loss, map_location=device
        )
    except CheckpointError as err:
        raise RunError(str(err)) from None
    buffers = checkpoint.extra["model_buffers"]
    experiment.model.load_state_dict({k: v.to(device) for k, v in buffers.items()}, strict=False)
    if legacy is not None:
        _innermost(experiment.loss).load_own_state_dict(legacy)
    return experiment, checkpoint


def _read_config(path: Path) -> ExperimentConfig:
    try:
        return ExperimentConfig.from_dict(json.loads(path.read_text())).resolved()
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise RunError(f"{path}: {err}") from None


def _check_matches(config: ExperimentConfig, extra: dict, config_path: Path) -> None:
    """``RunError`` unless ``config`` is the configuration the checkpoint was trained with."""
    if not isinstance(extra.get("config"), dict):
        raise CheckpointError(f"{config_path.parent / 'checkpoint.pt'} records no configuration")
    try:
        trained = ExperimentConfig.from_dict(extra["config"])
    except ValueError as err:
        raise CheckpointError(f"the configuration in checkpoint.pt cannot be read: {err}") from None
    fingerprint = extra.get("config_fingerprint", trained.fingerprint())
    if config.fingerprint() == fingerprint:
        return
    here, there = config.to_dict(), trained.to_dict()
    keys = [k for k in here if k not in RUNTIME_KEYS and here[k] != there[k]]
    differences = "; ".join(f"{k}: {here[k]!r} there, {there[k]!r} trained" for k in keys)
    raise RunError(
        f"{config_path} does not match the configuration checkpoint.pt was trained with "
        f"({differences or 'the checkpoint fingerprint differs'}): put the trained values back "
        "into config.json, or train a new run"
    )


def _innermost(loss: Any) -> Any:
    """The innermost wrapper of a loss stack (``OTMDR(WDAT(Trace_ELBO()))`` -> the WDAT)."""
    while isinstance(getattr(loss, "elbo", None), WrapperELBO):
        loss = loss.elbo
    return loss


def environment() -> dict[str, str]:
    """The command line and the versions, for the JSON a command writes."""
    return {
        "command": " ".join(["otmdr", *sys.argv[1:]]),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyro_otmdr": version("pyro-otmdr"),
    }


def write_evaluation(
    out: Path, name: str, suffix: str, result: EvaluationResult, extra: dict
) -> None:
    """``<name><suffix>.json`` with the metrics, ``calibration<suffix>.png`` and its PAV plot."""
    write_json(out / f"{name}{suffix}.json", {**extra, "metrics": result.metrics})
    with staged(out) as folder:
        result.plot_calibration(folder / f"calibration{suffix}.png")


def write_plot(path: Path, plot: Any) -> None:
    """``plot(tmp)`` (a result's ``plot`` method) into a temporary file that replaces ``path``."""
    with atomic_path(path) as tmp:
        plot(tmp)


def print_metrics(metrics: dict[str, float]) -> None:
    """One indented line per metric."""
    width = max([12, *(len(name) + 1 for name in metrics)])
    for name, value in metrics.items():
        print(f"  {name:<{width}} {value:.4f}")


def target_units(experiment: Experiment) -> dict[str, float]:
    """A regression run's target scale, ``{"target_mean": ..., "target_std": ...}``, for the
    JSON of its metrics (which are in standardised units); empty for a classifier."""
    units = experiment.splits.target_normalization
    if not experiment.is_regression or units is None:
        return {}
    return {"target_mean": units[0], "target_std": units[1]}


def print_target_units(experiment: Experiment, metrics: dict[str, float]) -> None:
    """For a regression run: the line that gives RMSE, MAE and CRPS in the original units."""
    units = target_units(experiment)
    if not units:
        return
    std = units["target_std"]
    original = ", ".join(f"{k} {metrics[k] * std:.4g}" for k in ("rmse", "mae", "crps"))
    print(f"  (standardised targets; in the original units, std {std:.4g}: {original})")


def mean_step_ms(history: Sequence[dict]) -> float:
    """Mean step time over the run, each epoch weighted by its number of steps."""
    timed = [r for r in history if not math.isnan(r["step_ms"])]
    return statistics.fmean([r["step_ms"] for r in timed], weights=[r["steps"] for r in timed])


def write_tree(path: Path, tree: Any) -> None:
    """The ArviZ ``DataTree`` as netCDF at ``path``, atomically, with its SHA-256 beside it
    (``tree.nc.sha256``). It is serialised in memory first: h5py crashes on a full disk."""
    write_verified(path, tree.to_netcdf(None, engine="h5netcdf"))


def read_tree(path: Path) -> Any:
    """The run's ``tree.nc``, loaded, after checking it against its checksum.

    :raises RunError: if it does not match its checksum or cannot be read.
    """
    import xarray as xr

    try:
        data = read_verified(path)
        with xr.open_datatree(io.BytesIO(data), engine="h5netcdf") as tree:
            return tree.load()
    except ChecksumError as err:
        raise RunError(str(err)) from None
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is not a readable ArviZ tree: {err}") from None


def add_to_tree(path: Path, dataset: Any, group: str) -> None:
    """Rewrite the run's ArviZ ``tree.nc`` with ``dataset`` as its group ``group`` (atomically:
    a failed write leaves the old ``tree.nc`` as it was)."""
    import xarray as xr

    tree = read_tree(path)
    tree[group] = xr.DataTree(dataset)
    write_tree(path, tree)


def train_into(
    out: Path,
    experiment: Experiment,
    *,
    start_epoch: int = 0,
    steps: int = 0,
    history: list[dict] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
    skip_nonfinite: bool = False,
) -> EvaluationResult:
    """Train ``experiment`` into the run directory ``out`` from ``start_epoch`` (``steps`` and
    ``history`` so far): a checkpoint after every epoch, then ``history.json``, ``metrics.json``
    (with the timing) and ``tree.nc`` of the test evaluation, which it returns. ``history`` is
    extended in place, so after a ``KeyboardInterrupt`` it holds the epochs checkpointed."""
    history = [] if history is None else history

    def checkpoint(stats, record) -> None:
        nonlocal steps
        steps += stats.steps
        history.append(record)
        save_run_checkpoint(out / "checkpoint.pt", experiment, record["epoch"], steps, history)

    start = time.perf_counter()
    train_experiment(
        experiment,
        log=log,
        on_epoch=checkpoint,
        start_epoch=start_epoch,
        progress=progress,
        skip_nonfinite=skip_nonfinite,
    )
    train_seconds = time.perf_counter() - start
    write_json(out / "history.json", history)
    result = evaluate_experiment(experiment)
    timing = {"step_ms": mean_step_ms(history), "train_seconds": train_seconds, "steps": steps}
    timing["skipped"] = sum(record.get("skipped", 0) for record in history)
    extra = {"split": "test", **timing, **target_units(experiment), **environment()}
    write_evaluation(out, "metrics", "", result, extra)
    write_tree(out / "tree.nc", result.to_datatree())
    return result
