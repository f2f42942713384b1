"""Running an experiment: train it, evaluate it, attack it, shift its inputs.

Each function takes an :class:`~.experiment.Experiment`; evaluations run in eval mode with the
RNG seeded by the configuration, so running one again gives the same numbers.

Usage::

    from pyro_otmdr.experiments import run_experiment

    metrics = run_experiment(guide="delta", method="sam", epochs=1, hidden=(16,))
    assert 0 <= metrics["accuracy"] <= 1
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyro
import torch
from pyro.optim.lr_scheduler import PyroLRScheduler

from ..evaluation import EvaluationResult, RobustnessReport, evaluate, robustness
from ..evaluation.shift import ShiftResult, evaluate_shift
from ..workflow.training import EpochStats, train
from .config import ExperimentConfig
from .experiment import Experiment, build_experiment
from .names import SHIFT_NAMES
from .settings import Choice

__all__ = [
    "attack_experiment",
    "evaluate_experiment",
    "run_experiment",
    "shift_experiment",
    "train_experiment",
]

_MONITOR_DRAWS = 8  # posterior draws of the per-epoch accuracy or RMSE (AutoNormal)
_SPLITS = ("val", "test")


def train_experiment(
    experiment: Experiment,
    *,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[EpochStats, dict], None] | None = None,
    start_epoch: int = 0,
    progress: bool | None = None,
    skip_nonfinite: bool = False,
) -> list[dict[str, float]]:
    """Train for ``config.epochs``; return one dict per epoch (loss, accuracy, lr, timing).

    After each epoch the accuracy of the posterior predictive (8 draws for AutoNormal) on the
    validation split, or the test split when there is none, is measured (``val_accuracy``; for a
    regression data set the RMSE of the predictive mean, ``val_rmse``); ``log`` gets one line
    per epoch and ``on_epoch(stats, record)`` is called (to write a checkpoint, say). A resumed
    run starts at ``start_epoch`` (the number of epochs already done). ``progress`` is the
    progress bar over each epoch's steps (default: only on a terminal). ``skip_nonfinite``
    skips a batch whose loss is not finite, parameters untouched, and counts it (``skipped``).

    The loss is the mean step loss divided by the number of training examples; ``lr`` is the
    rate the epoch's steps used (read after its first step: a resumed run's optimisers, and
    with them its scheduled rate, exist only from then on).
    """
    config = experiment.config
    monitor = "val" if experiment.splits.val is not None else "test"
    metric, label = ("rmse", "rmse") if experiment.is_regression else ("accuracy", "acc")
    history: list[dict[str, float]] = []
    rates: dict[int, float] = {}

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index, batch in enumerate(experiment.train_batches(epoch)):
            yield batch
            if index == 0:
                rates[epoch] = experiment.current_lr()

    def after_epoch(stats: EpochStats) -> None:
        record = {
            "epoch": stats.epoch + 1,
            "loss": stats.loss / experiment.num_data,
            f"{monitor}_{metric}": _monitor(experiment, monitor, metric),
            "lr": rates.get(stats.epoch, experiment.current_lr()),
            "steps": stats.steps,
            "skipped": stats.skipped,
            "step_ms": stats.step_ms,
            "seconds": stats.seconds,
        }
        history.append(record)
        if log is not None:
            log(
                f"epoch {record['epoch']:>3}/{config.epochs}  loss {record['loss']:.4f}  "
                f"{monitor} {label} {record[f'{monitor}_{metric}']:.4f}  lr {record['lr']:.3g}  "
                f"{stats.step_ms:.1f} ms/step  {stats.seconds:.1f} s"
            )
        if on_epoch is not None:
            on_epoch(stats, record)

    experiment.model.train()
    scheduler = experiment.optim if isinstance(experiment.optim, PyroLRScheduler) else None
    train(
        experiment.svi,
        batches,
        epochs=config.epochs,
        start_epoch=start_epoch,
        scheduler=scheduler,
        on_epoch=after_epoch,
        progress=progress,
        skip_nonfinite=skip_nonfinite,
    )
    return history


def _monitor(experiment: Experiment, split: str, metric: str) -> float:
    x, y = experiment.split_tensors(split)
    draws = min(experiment.config.num_samples, _MONITOR_DRAWS)
    experiment.model.eval()
    try:
        result = evaluate(experiment.model, experiment.guide, x, y, num_samples=draws)
    finally:
        experiment.model.train()
    return result.metrics[metric]


def _classifiers_only(experiment: Experiment, what: str) -> None:
    """A ``ValueError`` saying that ``what`` is for classifiers, for a regression run."""
    if experiment.is_regression:
        raise ValueError(
            f"{what} are for classifiers (they measure accuracy); {experiment.config.dataset} is "
            "a regression data set: evaluate it with 'otmdr evaluate' (RMSE, NLL, CRPS, coverage)"
        )


def evaluate_experiment(
    experiment: Experiment,
    split: str = "test",
    *,
    x_ood: torch.Tensor | None = None,
    num_samples: int | None = None,
) -> EvaluationResult:
    """:func:`~pyro_otmdr.evaluate` on ``split`` (``test`` or ``val``), in eval mode.

    On the test split the temperature of a classifier is fitted on the validation split when
    there is one (a regression run has none). The torch RNG is seeded with ``config.seed``
    first, so evaluating a run again gives the same draws.
    """
    x, y = _split(experiment, split)
    val = {}
    if split == "test" and experiment.splits.val is not None and not experiment.is_regression:
        val = dict(zip(("x_val", "y_val"), experiment.split_tensors("val"), strict=True))
    with _seeded_eval(experiment):
        return evaluate(
            experiment.model,
            experiment.guide,
            x,
            y,
            num_samples=num_samples or experiment.config.num_samples,
            x_ood=x_ood,
            **val,
        )


def _split(
    experiment: Experiment, split: str, on_device: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets of ``split`` (``val`` or ``test``), checked by name."""
    Choice(_SPLITS, "split").check("split", split)
    return experiment.split_tensors(split, on_device=on_device)


@contextlib.contextmanager
def _seeded_eval(experiment: Experiment) -> Iterator[None]:
    """The model in eval mode and the RNG seeded with ``config.seed``; train mode after."""
    experiment.model.eval()
    pyro.set_rng_seed(experiment.config.seed)
    try:
        yield
    finally:
        experiment.model.train()


def attack_experiment(
    experiment: Experiment,
    split: str = "test",
    *,
    threats: Sequence[str] = ("w2-linf", "linf"),
    budgets: Sequence[float] = (0.02, 0.05, 0.1),
    num_samples: int | None = None,
    steps: int = 50,
    progress: bool | None = None,
) -> RobustnessReport:
    """:func:`~pyro_otmdr.robustness` of the run on ``split``, in eval mode, seeded by the config.

    The inputs are the split's own, in their ``[0, 1]`` box (normalisation is inside the model).

    :raises ValueError: for a regression run (the attacks are for classifiers).
    """
    _classifiers_only(experiment, "attacks")
    x, y = _split(experiment, split, on_device=True)
    with _seeded_eval(experiment):
        return robustness(
            experiment.model,
            experiment.guide,
            x,
            y,
            threats=threats,
            budgets=budgets,
            num_samples=num_samples or experiment.config.num_samples,
            steps=steps,
            progress=progress,
        )


def shift_experiment(
    experiment: Experiment,
    split: str = "test",
    *,
    shifts: Sequence[str] = SHIFT_NAMES,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    num_samples: int | None = None,
    progress: bool | None = None,
) -> ShiftResult:
    """:func:`~pyro_otmdr.evaluation.shift.evaluate_shift` of the run on ``split``, in eval mode.

    Shifts act on the split's own inputs in their ``[0, 1]`` box, seeded by the config's seed, and
    every evaluation draws from the same seeded RNG, so the table is reproducible.

    :raises ValueError: for a regression run (the shifts are image corruptions of classifiers'
        inputs).
    """
    _classifiers_only(experiment, "input shifts")
    x, y = _split(experiment, split, on_device=True)
    with _seeded_eval(experiment):
        return evaluate_shift(
            experiment.model,
            experiment.guide,
            x,
            y,
            shifts=shifts,
            severities=severities,
            seed=experiment.config.seed,
            progress=progress,
            num_samples=num_samples or experiment.config.num_samples,
        )


def run_experiment(config: ExperimentConfig | None = None, **overrides: Any) -> dict[str, float]:
    """Build, train and evaluate one run quietly; return the test metrics of :func:`evaluate`
    (a classifier's, or for a regression data set such as ``diabetes`` the regression ones)."""
    config = ExperimentConfig(**{**(config.__dict__ if config else {}), **overrides})
    experiment = build_experiment(config)
    train_experiment(experiment)
    return evaluate_experiment(experiment).metrics
