"""One experiment: build data, a Bayesian model, a guide, a loss and an optimiser by name.

This is the layer the ``otmdr`` command and the benchmarks stand on; the scripts in ``examples/``
show the same steps written out as plain Pyro code. :func:`build_experiment` turns an
:class:`ExperimentConfig` into an :class:`Experiment` (the objects of one run),
:func:`train_experiment` runs its epochs and :func:`evaluate_experiment` its posterior predictive.

Two conventions worth knowing:

* ``rho=None`` takes the paper's radius for the guide (:data:`DEFAULT_RHO`): 0.05 for the point
  estimate and the ensemble (the CIFAR-10 value), 0.005 for the Gaussian (the BNN value).
* ``data_robust`` (one of :data:`DATA_ROBUST`) makes the likelihood data-robust, under any
  ``method``: the loss is the ELBO, wrapped by the data-robust loss, wrapped by SAM or OT-MDR
  (:func:`make_loss`); the attack then runs once per step.
* The ELBO is a sum over the N training examples, not a mean. Adam does not care; for SGD the
  learning rate is per example: the torch optimiser gets ``lr / N``, which is SGD with ``lr`` on
  the per-example loss, so the usual CIFAR values (0.1) carry over.

Usage::

    metrics = run_experiment(dataset="digits", guide="normal", method="otmdr", epochs=30, seed=0)

    experiment = build_experiment(ExperimentConfig(guide="delta", method="sam", epochs=5))
    history = train_experiment(experiment, log=print)
    result = evaluate_experiment(experiment)          # an EvaluationResult

    robust = ExperimentConfig(guide="delta", method="otmdr", data_robust="armor", eps=0.1)
    report = attack_experiment(build_experiment(robust), budgets=(0.1,))  # after training it
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..bayes.bnn import BayesianClassifier, bayesian
from ..bayes.ensemble import AutoDeltaEnsemble, EnsembleELBO
from ..bayes.members import is_ensemble
from ..data_space.elbo import ARMOR, TRADES, WDAT, AdversarialTraining, DataRobustELBO
from ..evaluation import EvaluationResult, RobustnessReport, evaluate, robustness
from ..evaluation.shift import ShiftResult, evaluate_shift
from ..model_space.elbo import DEFAULT_NOISE_STD, OTMDR, SAM
from ..workflow.data import DATASET_NAMES, DataSplits, load_dataset, load_fakedata
from ..workflow.models import MODEL_NAMES, Normalize, build_model
from ..workflow.training import EpochStats, shuffled_batches, train
from .names import (
    DATA_ROBUST,
    DATA_ROBUST_PARAMS,
    DEFAULT_RHO,
    GUIDES,
    METHODS,
    OPTIMIZERS,
    SCHEDULES,
    SHIFT_NAMES,
)

__all__ = [
    "DATA_ROBUST",
    "DATA_ROBUST_LOSSES",
    "DEFAULT_RHO",
    "GUIDES",
    "METHODS",
    "OPTIMIZERS",
    "RUNTIME_KEYS",
    "SCHEDULES",
    "Experiment",
    "ExperimentConfig",
    "attack_experiment",
    "build_experiment",
    "evaluate_experiment",
    "make_data_robust",
    "make_guide",
    "make_loss",
    "make_optim",
    "run_experiment",
    "shift_experiment",
    "train_experiment",
]


_MONITOR_DRAWS = 8  # posterior draws of the per-epoch accuracy (AutoNormal)

#: The data-robust losses by the name of :data:`DATA_ROBUST` (all but ``"none"``).
DATA_ROBUST_LOSSES: dict[str, type[DataRobustELBO]] = {
    "at": AdversarialTraining,
    "trades": TRADES,
    "wdat": WDAT,
    "armor": ARMOR,
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one run; the defaults are the digits MLP of the README.

    ``rho=None`` means :data:`DEFAULT_RHO` of the guide; :meth:`resolved` fills it in and checks
    every name. ``width`` is the first stage's channels of ``resnet10``/``resnet18`` and of
    ``cnn`` (whose stages are ``width, 2 width, 4 width``). ``val_size`` holds out that many
    CIFAR training images as a validation split (digits always has one).

    ``data_robust`` is one of :data:`DATA_ROBUST` (``"none"``: the plain likelihood). Its
    parameters, in the units of the inputs' ``[0, 1]`` box: ``eps``, the linf radius of ``at``,
    ``trades`` and ``armor``; ``delta``, the W2 budget of ``wdat``; ``beta``, the KL weight of
    ``trades`` and ``wdat``; ``budget``, the KL budget of ``armor``'s dual. Configurations saved
    before these fields existed load with the defaults (no data-robust loss).

    Usage::

        config = ExperimentConfig(guide="delta", method="otmdr", data_robust="trades", eps=0.1)
        config.resolved().rho                       # 0.05, the guide's default radius
    """

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_size: int = 0
    model: str = "mlp"
    hidden: tuple[int, ...] = (128,)
    width: int | None = None
    guide: str = "normal"
    method: str = "otmdr"
    rho: float | None = None
    rho2: float | None = None
    n_particles: int = 1
    num_members: int = 5
    noise_std: float = DEFAULT_NOISE_STD
    data_robust: str = "none"
    eps: float = 0.1
    delta: float = 0.1
    beta: float = 6.0
    budget: float = 0.02
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-2
    momentum: float = 0.9
    schedule: str = "cosine"
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    num_samples: int = 32
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0

    def resolved(self) -> ExperimentConfig:
        """A copy with ``rho`` filled in from the guide; raises ``ValueError`` for bad names and
        for data-robust parameters out of range (before anything is built or trained)."""
        _check_choice("data set", self.dataset, DATASET_NAMES)
        _check_choice("model", self.model, MODEL_NAMES)
        _check_choice("guide", self.guide, GUIDES)
        _check_choice("method", self.method, METHODS)
        _check_data_robust(self)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.width is not None and self.model not in ("cnn", "resnet10", "resnet18"):
            raise ValueError(f"width applies to cnn, resnet10 and resnet18, not {self.model!r}")
        rho = DEFAULT_RHO[self.guide] if self.rho is None else self.rho
        return replace(self, rho=rho, hidden=tuple(int(h) for h in self.hidden))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``hidden`` as a list)."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    def fingerprint(self) -> str:
        """The SHA-256 of the settings that decide the results: all but :data:`RUNTIME_KEYS`.

        A checkpoint records it, so a run directory whose ``config.json`` was edited is caught.
        """
        decisive = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """The inverse of :meth:`to_dict`; unknown keys and values of the wrong type are errors."""
        if not isinstance(values, dict):
            raise ValueError(f"a configuration is a JSON object, got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known: {sorted(known)}")
        for name, value in values.items():
            _check_type(name, known[name].type, value)
        values = dict(values)
        if "hidden" in values:
            values["hidden"] = tuple(values["hidden"])
        return cls(**values)


#: Where and how a run executes, not what it computes: ``config.json`` may change these (another
#: device, a moved data folder) and still match the checkpoint's fingerprint.
RUNTIME_KEYS = ("device", "num_workers", "data_dir", "download")

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "None": (type(None),),
}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """``ValueError`` unless the JSON ``value`` of field ``name`` fits its ``annotation``."""
    if annotation.startswith("tuple"):  # tuple[int, ...]: a list of ints in JSON
        ok = isinstance(value, list | tuple) and all(_fits(v, (int,)) for v in value)
    else:
        ok = _fits(
            value, tuple(t for part in annotation.split("|") for t in _JSON_TYPES[part.strip()])
        )
    if not ok:
        raise ValueError(f"configuration key {name!r} must be {annotation}, got {value!r}")


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_data_robust(config: ExperimentConfig) -> None:
    """The data-robust loss's name and parameters; then the loss's own checks, by building it."""
    _check_choice("data-robust loss", config.data_robust, DATA_ROBUST)
    for name in ("eps", "delta"):
        value = getattr(config, name)
        if not (_is_number(value) and 0 < value <= 1):
            raise ValueError(
                f"{name} must be a number in (0, 1], a radius in the units of the inputs' [0, 1] "
                f"box, got {value!r}"
            )
    if not (_is_number(config.beta) and config.beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {config.beta!r}")
    if not (_is_number(config.budget) and config.budget > 0):
        raise ValueError(f"budget (ARMOR's KL budget) must be a number > 0, got {config.budget!r}")
    if config.data_robust != "none":
        try:
            make_data_robust(config, Trace_ELBO())
        except TypeError as err:
            raise ValueError(f"data-robust loss {config.data_robust!r}: {err}") from None


# ------------------------------------------------------------------------------------ builders


def make_guide(
    kind: str,
    model: BayesianClassifier,
    member_starts: Sequence[dict] = (),
    init_scale: float = 1e-3,
) -> pyro.nn.PyroModule:
    """``delta`` (AutoDelta), ``normal`` (AutoNormal) or ``ensemble`` (AutoDeltaEnsemble).

    Point estimates and means start at the network's own initial weights, AutoNormal's scales at
    ``init_scale``; ensemble members start at ``member_starts``, one dict of initial values per
    member (fresh network initialisations).
    """
    _check_choice("guide", kind, GUIDES)
    init = init_to_value(values=model.initial_values())
    if kind == "delta":
        return AutoDelta(model, init_loc_fn=init)
    if kind == "normal":
        return AutoNormal(model, init_loc_fn=init, init_scale=init_scale)
    inits = [init_to_value(values=values) for values in member_starts]
    return AutoDeltaEnsemble(model, num_members=len(inits), init_loc_fn=inits)


def make_data_robust(config: ExperimentConfig, elbo: ELBO | None = None) -> ELBO:
    """``elbo`` (default ``Trace_ELBO()``) wrapped by the data-robust loss of ``config``.

    ``"none"`` returns ``elbo`` itself; ``"at"`` is :class:`~pyro_otmdr.AdversarialTraining`
    with ``eps``, ``"trades"`` :class:`~pyro_otmdr.TRADES` with ``eps`` and ``beta``, ``"wdat"``
    :class:`~pyro_otmdr.WDAT` with ``delta`` and ``beta``, ``"armor"`` :class:`~pyro_otmdr.ARMOR`
    with ``eps`` and ``budget``; every other option at the loss's default (10 ascent steps). The
    losses loop over an ensemble's members themselves.

    Usage::

        loss = make_data_robust(ExperimentConfig(data_robust="wdat", delta=0.05))   # a WDAT
    """
    _check_choice("data-robust loss", config.data_robust, DATA_ROBUST)
    elbo = Trace_ELBO() if elbo is None else elbo
    if config.data_robust == "none":
        return elbo
    options = {name: getattr(config, name) for name in DATA_ROBUST_PARAMS[config.data_robust]}
    return DATA_ROBUST_LOSSES[config.data_robust](elbo, **options)


def make_loss(config: ExperimentConfig) -> ELBO:
    """The loss of a run: the ELBO, wrapped by the data-robust loss, wrapped by SAM or OT-MDR.

    The ELBO is ``Trace_ELBO`` (in :class:`~pyro_otmdr.EnsembleELBO` for plain SVI of an
    ensemble without a data-robust loss); ``data_robust`` other than ``"none"`` wraps it
    (:func:`make_data_robust`); then ``method`` ``sam`` or ``otmdr`` wraps that (``svi`` leaves
    it as it is).

    Usage::

        loss = make_loss(ExperimentConfig(method="otmdr", data_robust="armor"))
        type(loss).__name__, type(loss.elbo).__name__      # ('OTMDR', 'ARMOR')
    """
    _check_choice("method", config.method, METHODS)
    rho = DEFAULT_RHO.get(config.guide, 0.05) if config.rho is None else config.rho
    if config.data_robust != "none":
        base = make_data_robust(config)  # loops over an ensemble's members itself
    elif config.method == "svi" and config.guide == "ensemble":
        base = EnsembleELBO(Trace_ELBO())
    else:
        base = Trace_ELBO()
    if config.method == "svi":
        return base
    if config.method == "sam":
        return SAM(base, rho=rho)
    return OTMDR(
        base,
        rho=rho,
        rho2=config.rho2,
        n_particles=config.n_particles,
        noise_std=config.noise_std,
        seed=config.seed,
    )


def make_optim(config: ExperimentConfig, num_data: int) -> PyroOptim:
    """Adam or SGD with momentum, under a per-epoch cosine schedule or a constant rate.

    SGD gets ``lr / num_data`` (the ELBO sums over the training set; see the module docstring).
    ``cosine`` is ``pyro.optim.CosineAnnealingLR`` with ``T_max = epochs``: call ``optim.step()``
    after every epoch (:func:`train_experiment` does).
    """
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    _check_choice("schedule", config.schedule, SCHEDULES)
    if config.optimizer == "adam":
        ctor, args = torch.optim.Adam, {"lr": config.lr}
    else:
        ctor, args = torch.optim.SGD, {"lr": config.lr / num_data, "momentum": config.momentum}
    if config.schedule == "constant":
        return PyroOptim(ctor, args)
    return pyro.optim.CosineAnnealingLR(
        {"optimizer": ctor, "optim_args": args, "T_max": config.epochs}
    )


# ------------------------------------------------------------------------------------ one run


@dataclass
class Experiment:
    """The objects of one run, built by :func:`build_experiment`.

    ``svi`` is an ordinary ``pyro.infer.SVI`` of ``model``, ``guide``, ``optim`` and ``loss``.
    """

    config: ExperimentConfig
    splits: DataSplits
    model: BayesianClassifier
    guide: pyro.nn.PyroModule
    loss: ELBO
    optim: PyroOptim
    svi: SVI
    device: torch.device
    _tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def num_data(self) -> int:
        return len(self.splits.train)

    def train_batches(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The shuffled training batches of ``epoch``, on the device.

        In-memory data (digits) is shuffled by a generator seeded with ``seed + epoch``; image
        data goes through a ``DataLoader`` with the training augmentation.
        """
        config = self.config
        if isinstance(self.splits.train, TensorDataset):
            x, y = self.split_tensors("train", on_device=True)
            return shuffled_batches(x, y, batch_size=config.batch_size, seed=config.seed + epoch)
        generator = torch.Generator().manual_seed(config.seed + epoch)
        loader = DataLoader(
            self.splits.train,
            config.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return ((x.to(self.device), y.to(self.device)) for x, y in loader)

    def split_tensors(
        self, split: str, on_device: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split ``train``/``val``/``test`` as ``(x, y)`` tensors (test transform)."""
        if split not in self._tensors:
            dataset = getattr(self.splits, split, None)
            if dataset is None:
                raise ValueError(f"{self.config.dataset} has no {split!r} split")
            self._tensors[split] = dataset_tensors(dataset, self.config.num_workers)
        x, y = self._tensors[split]
        return (x.to(self.device), y.to(self.device)) if on_device else (x, y)

    def current_lr(self) -> float:
        """The learning rate now, on the scale of ``config.lr``."""
        for optimizer in self.optim.optim_objs.values():
            optimizer = getattr(optimizer, "optimizer", optimizer)  # a scheduler's optimiser
            lr = optimizer.param_groups[0]["lr"]
            return lr * self.num_data if self.config.optimizer == "sgd" else lr
        return self.config.lr


def dataset_tensors(dataset: Dataset, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``dataset`` as ``(inputs, labels)`` CPU tensors (a ``TensorDataset`` as it is)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=512, num_workers=num_workers):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys).long()


def _load_splits(config: ExperimentConfig) -> DataSplits:
    if config.dataset == "digits":
        return load_dataset("digits", seed=config.seed, as_images=config.model != "mlp")
    if config.dataset == "fakedata":
        return load_dataset("fakedata", seed=config.seed)
    return load_dataset(
        config.dataset,
        config.data_dir,
        config.download,
        seed=config.seed,
        val_size=config.val_size,
    )


def _network_factory(config: ExperimentConfig, splits: DataSplits) -> Callable[[], torch.nn.Module]:
    shape = splits.input_shape
    kwargs: dict[str, Any] = {}
    if config.model == "mlp":
        kwargs["hidden"] = config.hidden
    if config.width is not None:
        if config.model == "cnn":
            kwargs["channels"] = (config.width, 2 * config.width, 4 * config.width)
        else:
            kwargs["width"] = config.width

    def new_net() -> torch.nn.Module:
        return build_model(
            config.model,
            num_classes=splits.num_classes,
            in_channels=shape[0] if len(shape) == 3 else 1,
            in_features=math.prod(shape),
            **kwargs,
        )

    return new_net


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Clear the param store, seed everything and build the objects of one run on its device."""
    config = config.resolved()
    device = torch.device(config.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    splits = _load_splits(config)
    new_net = _network_factory(config, splits)
    num_data = len(splits.train)
    normalize = None if splits.normalization is None else Normalize(*splits.normalization)
    model = bayesian(
        new_net(), num_data=num_data, prior_scale=config.prior_scale, input_transform=normalize
    ).to(device)
    members = config.num_members if config.guide == "ensemble" else 0
    starts = [_initial_values(new_net(), num_data, device) for _ in range(members)]
    guide = make_guide(config.guide, model, starts, init_scale=config.init_scale)
    loss = make_loss(config)
    optim = make_optim(config, num_data)
    svi = SVI(model, guide, optim, loss=loss)
    return Experiment(config, splits, model, guide, loss, optim, svi, device)


def _initial_values(net: torch.nn.Module, num_data: int, device: torch.device) -> dict:
    values = bayesian(net, num_data=num_data).initial_values()
    return {name: value.to(device) for name, value in values.items()}


def warm_up(experiment: Experiment) -> None:
    """Run the guide (every member of an ensemble) once on two examples to create its params."""
    x, y = (t[:2].to(experiment.device) for t in experiment.split_tensors("train"))
    guide = experiment.guide
    if is_ensemble(guide):
        for index in range(guide.num_members):
            with guide.member(index):
                guide(x, y)
    else:
        guide(x, y)


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
    validation split, or the test split when there is none, is measured; ``log`` gets one line
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
            f"{monitor}_accuracy": _monitor_accuracy(experiment, monitor),
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
                f"{monitor} acc {record[f'{monitor}_accuracy']:.4f}  lr {record['lr']:.3g}  "
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


def _monitor_accuracy(experiment: Experiment, split: str) -> float:
    x, y = experiment.split_tensors(split)
    draws = min(experiment.config.num_samples, _MONITOR_DRAWS)
    experiment.model.eval()
    try:
        result = evaluate(experiment.model, experiment.guide, x, y, num_samples=draws)
    finally:
        experiment.model.train()
    return result.metrics["accuracy"]


def evaluate_experiment(
    experiment: Experiment,
    split: str = "test",
    *,
    x_ood: torch.Tensor | None = None,
    num_samples: int | None = None,
) -> EvaluationResult:
    """:func:`~pyro_otmdr.evaluate` on ``split`` (``test`` or ``val``), in eval mode.

    On the test split the temperature is fitted on the validation split when there is one. The
    torch RNG is seeded with ``config.seed`` first, so evaluating a run again gives the same draws.
    """
    _check_choice("split", split, ("val", "test"))
    x, y = experiment.split_tensors(split)
    val = {}
    if split == "test" and experiment.splits.val is not None:
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
    """
    _check_choice("split", split, ("val", "test"))
    x, y = experiment.split_tensors(split, on_device=True)
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
    """
    _check_choice("split", split, ("val", "test"))
    x, y = experiment.split_tensors(split, on_device=True)
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


def ood_inputs(experiment: Experiment, name: str) -> torch.Tensor:
    """Out-of-distribution test inputs shaped like the run's: ``fakedata`` or a data set's test.

    ``fakedata`` gives as many random images as the test split has (8x8 grey ones, flattened, for
    flat digits), standardised as ``(image - 0.5) / 0.5`` and placed in the network's standardised
    input space: the model's normalisation sees them as its network always did (before the
    normalisation moved into the model, the fake images were fed to the network directly), so
    ``auroc_ood`` keeps its meaning and its values. Another data set must have inputs of the
    run's shape; its inputs are in their box like the run's.
    """
    config, shape = experiment.config, experiment.splits.input_shape
    if name == "fakedata":
        image = shape if len(shape) == 3 else (1, *_square(shape))
        size = len(experiment.splits.test)
        fake = load_fakedata(train_size=1, test_size=size, image_size=image, seed=config.seed + 1)
        noise = (dataset_tensors(fake.test)[0].reshape(size, *shape) - 0.5) / 0.5
        if experiment.splits.normalization is None:
            return noise
        mean, std = experiment.splits.normalization
        return noise * std + mean
    _check_choice("OOD data set", name, DATASET_NAMES)
    extra = {"as_images": len(shape) == 3} if name == "digits" else {}
    other = load_dataset(name, config.data_dir, config.download, seed=config.seed, **extra)
    x = dataset_tensors(other.test, config.num_workers)[0]
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(
            f"OOD data set {name!r} has inputs of shape {tuple(x.shape[1:])} but the run's model "
            f"takes {tuple(shape)}; choose fakedata or a data set of the same shape"
        )
    return x


def _square(shape: tuple[int, ...]) -> tuple[int, int]:
    side = math.isqrt(math.prod(shape))
    if side * side != math.prod(shape):
        raise ValueError(f"cannot make fake images for flat inputs of shape {shape}")
    return side, side


def run_experiment(config: ExperimentConfig | None = None, **overrides: Any) -> dict[str, float]:
    """Build, train and evaluate one run quietly; return the test metrics of :func:`evaluate`."""
    config = ExperimentConfig(**{**(config.__dict__ if config else {}), **overrides})
    experiment = build_experiment(config)
    train_experiment(experiment)
    return evaluate_experiment(experiment).metrics
