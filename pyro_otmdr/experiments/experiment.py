"""The objects of one run: data splits, the Bayesian model, guide, loss, optimiser and SVI.

:func:`build_experiment` turns an :class:`~.config.ExperimentConfig` into an :class:`Experiment`
on its device; :mod:`.runs` trains and evaluates it.

Usage::

    from pyro_otmdr.experiments import ExperimentConfig, build_experiment

    experiment = build_experiment(ExperimentConfig(guide="delta", method="sam", epochs=1))
    x, y = experiment.split_tensors("train")
    assert experiment.num_data == len(x) and type(experiment.loss).__name__ == "SAM"
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, SVI
from pyro.optim import PyroOptim
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..bayes.bnn import BayesianClassifier, bayesian
from ..bayes.members import is_ensemble, members_of
from ..workflow.data import DATASET_NAMES, DataSplits, load_dataset, load_fakedata
from ..workflow.models import Normalize, build_model
from ..workflow.training import shuffled_batches
from .builders import make_guide, make_loss, make_optim
from .config import ExperimentConfig
from .settings import Choice

__all__ = ["Experiment", "build_experiment", "dataset_tensors", "ood_inputs", "warm_up"]


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

    @property
    def is_regression(self) -> bool:
        """Whether the data set is a regression one (a ``BayesianRegressor``, Normal noise)."""
        return self.splits.is_regression

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
    if config.dataset == "diabetes":
        return load_dataset("diabetes", seed=config.seed)
    return load_dataset(
        config.dataset,
        config.data_dir,
        config.download,
        seed=config.seed,
        val_size=config.val_size,
    )


def _network_factory(config: ExperimentConfig, splits: DataSplits) -> Callable[[], torch.nn.Module]:
    shape = splits.input_shape
    outputs = 1 if splits.is_regression else splits.num_classes  # a regression net: the mean
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
            num_classes=outputs,
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
    likelihood = "normal" if splits.is_regression else "categorical"
    model = bayesian(
        new_net(),
        num_data=num_data,
        prior_scale=config.prior_scale,
        input_transform=normalize,
        likelihood=likelihood,
    ).to(device)
    members = config.num_members if config.guide == "ensemble" else 0
    starts = [_initial_values(new_net(), num_data, device, likelihood) for _ in range(members)]
    guide = make_guide(config.guide, model, starts, init_scale=config.init_scale)
    loss = make_loss(config)
    optim = make_optim(config, num_data)
    svi = SVI(model, guide, optim, loss=loss)
    return Experiment(config, splits, model, guide, loss, optim, svi, device)


def _initial_values(
    net: torch.nn.Module, num_data: int, device: torch.device, likelihood: str
) -> dict:
    values = bayesian(net, num_data=num_data, likelihood=likelihood).initial_values()
    return {name: value.to(device) for name, value in values.items()}


def warm_up(experiment: Experiment) -> None:
    """Run the guide (every member of an ensemble) once on two examples to create its params."""
    x, y = (t[:2].to(experiment.device) for t in experiment.split_tensors("train"))
    guide = experiment.guide
    if is_ensemble(guide):
        for index in range(members_of(guide, "member")):
            with guide.member(index):
                guide(x, y)
    else:
        guide(x, y)


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
    if experiment.is_regression:
        raise ValueError(
            f"OOD detection scores a classifier's confidence; {config.dataset} is a regression "
            "data set (evaluate it without --ood)"
        )
    if name == "fakedata":
        image = shape if len(shape) == 3 else (1, *_square(shape))
        size = len(experiment.splits.test)
        fake = load_fakedata(train_size=1, test_size=size, image_size=image, seed=config.seed + 1)
        noise = (dataset_tensors(fake.test)[0].reshape(size, *shape) - 0.5) / 0.5
        if experiment.splits.normalization is None:
            return noise
        mean, std = experiment.splits.normalization
        return noise * std + mean
    Choice(DATASET_NAMES, "OOD data set").check("ood", name)
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
