"""Data sets: scikit-learn digits, CIFAR-10/100 (torchvision) and FakeData, as train/val/test;
scikit-learn diabetes for regression.

Every loader returns a :class:`DataSplits` of ``torch.utils.data.Dataset`` objects
(``val`` may be ``None``) with the number of classes (0 for a regression data set, whose
``task`` is ``"regression"``) and the input shape;
:meth:`DataSplits.loaders` wraps them in ``DataLoader`` s. :func:`load_dataset`
is the one entry point by name.

CIFAR comes from torchvision's own ``CIFAR10``/``CIFAR100`` classes, md5 checks
included. Nothing is downloaded unless ``download=True``; a data set that is not on
disk raises :class:`FileNotFoundError` saying how to get it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets
from torchvision import transforms as T

__all__ = [
    "CIFAR_STATS",
    "DATASET_NAMES",
    "REGRESSION_DATASETS",
    "TASKS",
    "DataSplits",
    "Loaders",
    "cifar_transforms",
    "default_data_dir",
    "load_cifar",
    "load_dataset",
    "load_diabetes_split",
    "load_digits_split",
    "load_fakedata",
]

#: Per-channel ``(mean, std)`` of the CIFAR training images, on the [0, 1] scale.
CIFAR_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_CIFAR_CLASSES = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}

#: What a data set's targets are: class labels (``classification``) or real numbers
#: (``regression``, observed by ``bayesian(..., likelihood="normal")``).
TASKS: tuple[str, ...] = ("classification", "regression")
_CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


class Loaders(NamedTuple):
    """``DataLoader`` s for the three splits (``val`` is ``None`` when there is no val split)."""

    train: DataLoader
    val: DataLoader | None
    test: DataLoader


@dataclass(frozen=True)
class DataSplits:
    """A data set split into ``train``, ``val`` (or ``None``) and ``test`` ``Dataset`` s.

    Items are ``(input tensor, int label)`` with inputs in their natural box ``[0, 1]``.
    ``input_shape`` is the shape of one input (``(64,)`` for flat digits, ``(3, 32, 32)``
    for CIFAR). ``normalization`` is ``(mean, std)``, tensors broadcastable to one input, that
    standardise the inputs: the models apply it themselves
    (:class:`~pyro_otmdr.workflow.models.Normalize`), so that attacks move the data in
    their own box.

    A regression data set (``task == "regression"``, :func:`load_diabetes_split`) has items
    ``(input tensor, float target)``, ``num_classes == 0``, and ``target_normalization``
    ``(mean, std)``: the floats its targets were standardised with, so that a target (or an
    RMSE) ``t`` in standardised units is ``mean + std * t`` (``std * t``) in the original ones.

    Usage::

        from pyro_otmdr.workflow.data import load_dataset

        splits = load_dataset("digits")
        x_train, y_train = splits.train.tensors        # digits are TensorDatasets
        train, val, test = splits.loaders(batch_size=128)
        x, y = next(iter(train))
        assert x.shape == (128, *splits.input_shape) and splits.num_classes == 10
    """

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    normalization: tuple[torch.Tensor, torch.Tensor] | None = None
    task: str = "classification"
    target_normalization: tuple[float, float] | None = None

    @property
    def is_regression(self) -> bool:
        """Whether the targets are real numbers (``task == "regression"``)."""
        return self.task == "regression"

    def loaders(
        self,
        batch_size: int,
        *,
        test_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int | None = None,
        **loader_kwargs: Any,
    ) -> Loaders:
        """Wrap the splits in ``DataLoader`` s; only the training loader shuffles.

        :param batch_size: the training batch size.
        :param test_batch_size: the val/test batch size (default: ``batch_size``).
        :param num_workers: worker processes per loader.
        :param seed: seeds the training shuffle (``None``: torch's global RNG).
        :param loader_kwargs: more ``DataLoader`` arguments (``pin_memory``, ``drop_last``...).
        """
        if batch_size < 1 or (test_batch_size is not None and test_batch_size < 1):
            raise ValueError("batch sizes must be positive ints")
        eval_batch = test_batch_size or batch_size
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        common = dict(num_workers=num_workers, **loader_kwargs)
        train = DataLoader(self.train, batch_size, shuffle=True, generator=generator, **common)
        val = None if self.val is None else DataLoader(self.val, eval_batch, **common)
        return Loaders(train, val, DataLoader(self.test, eval_batch, **common))


def default_data_dir() -> Path:
    """``$PYRO_OTMDR_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("PYRO_OTMDR_DATA", "data"))


# ---------------------------------------------------------------- digits


def load_digits_split(
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    as_images: bool = False,
) -> DataSplits:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), split, in ``[0, 1]``.

    The splits are stratified by class and fixed by ``seed``. Inputs are the pixels / 16,
    float32 tensors of shape ``(64,)``, or ``(1, 8, 8)`` with ``as_images=True`` (for the
    CNN); labels are int64. ``normalization`` holds the training split's per-pixel mean and
    standard deviation on that scale (a pixel constant in training gets ``1 / 16``: it is
    only centred, in units of the original 16 grey levels) for the model to standardise with.

    :param seed: seed of the random split.
    :param val_fraction: share of the data in the val split (0 for no val split).
    :param test_fraction: share of the data in the test split.
    :param as_images: return ``1x8x8`` images instead of 64 features.

    Usage::

        import torch
        from pyro_otmdr.workflow.data import load_digits_split

        splits = load_digits_split(seed=0)
        x_train, y_train = splits.train.tensors    # (N, 64) float32, (N,) int64
        assert x_train.shape[1:] == (64,) and x_train.dtype == torch.float32
        assert x_train.min() >= 0 and x_train.max() <= 1       # the box [0, 1]
        images = load_digits_split(as_images=True).train.tensors[0]   # (N, 1, 8, 8)
    """
    if not 0.0 < test_fraction < 1.0 or not 0.0 <= val_fraction < 1.0:
        raise ValueError("test_fraction must lie in (0, 1) and val_fraction in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 to leave training data, "
            f"got {val_fraction} + {test_fraction}"
        )
    x, y = load_digits(return_X_y=True)
    parts = _stratified_split(x, y, seed, val_fraction, test_fraction)
    mean, std = parts["train"][0].mean(0), parts["train"][0].std(0)
    std[std == 0] = 1.0
    shape = (1, 8, 8) if as_images else (64,)
    normalization = tuple(
        torch.as_tensor(v / 16.0, dtype=torch.float32).reshape(shape) for v in (mean, std)
    )

    def to_dataset(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
        features = torch.as_tensor(xs / 16.0, dtype=torch.float32)
        return TensorDataset(features.reshape(-1, *shape), torch.as_tensor(ys, dtype=torch.long))

    val = parts.get("val")
    return DataSplits(
        name="digits",
        train=to_dataset(*parts["train"]),
        val=None if val is None else to_dataset(*val),
        test=to_dataset(*parts["test"]),
        num_classes=10,
        input_shape=shape,
        normalization=normalization,
    )


def _stratified_split(
    x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    parts = {"test": (x_test, y_test)}
    if val_fraction == 0:
        parts["train"] = (x_rest, y_rest)
        return parts
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=val_fraction / (1.0 - test_fraction),
        random_state=seed,
        stratify=y_rest,
    )
    parts.update(train=(x_train, y_train), val=(x_val, y_val))
    return parts


# ---------------------------------------------------------------- diabetes


def load_diabetes_split(
    seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> DataSplits:
    """scikit-learn's diabetes regression data (442 patients, 10 features), split, standardised.

    The target is a measure of disease progression one year after baseline. The splits are
    random, fixed by ``seed`` (the same fractions as digits: 286 / 67 / 89 with the defaults).
    Features and targets are standardised with the mean and standard deviation of the training
    split (features from scikit-learn's unscaled values), so metrics such as the RMSE are in
    standardised units: predicting the training mean scores an RMSE near 1. The target's
    ``(mean, std)`` is kept as ``target_normalization`` to report them in the original units
    (``rmse * std``; the standard deviation is about 77). Inputs and targets are float32 tensors,
    ``(10,)`` and ``()`` per item; ``normalization`` is ``None`` (the features are standardised
    already; this data set has no box to attack in, and attacks are for classifiers).

    :param seed: seed of the random split.
    :param val_fraction: share of the data in the val split (0 for no val split).
    :param test_fraction: share of the data in the test split.

    Usage::

        import torch
        from pyro_otmdr.workflow.data import load_diabetes_split

        splits = load_diabetes_split(seed=0)
        x_train, y_train = splits.train.tensors     # (286, 10) float32, (286,) float32
        assert splits.task == "regression" and splits.input_shape == (10,)
        assert abs(float(y_train.mean())) < 1e-5 and y_train.dtype == torch.float32
        mean, std = splits.target_normalization     # the targets' original units
        assert 70 < std < 85
    """
    if not 0.0 < test_fraction < 1.0 or not 0.0 <= val_fraction < 1.0:
        raise ValueError("test_fraction must lie in (0, 1) and val_fraction in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1 to leave training data, "
            f"got {val_fraction} + {test_fraction}"
        )
    x, y = load_diabetes(return_X_y=True, scaled=False)
    parts = _random_split(x, y, seed, val_fraction, test_fraction)
    x_train, y_train = parts["train"]
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0
    target_mean, target_std = float(y_train.mean()), float(y_train.std())

    def to_dataset(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
        features = torch.as_tensor((xs - mean) / std, dtype=torch.float32)
        targets = torch.as_tensor((ys - target_mean) / target_std, dtype=torch.float32)
        return TensorDataset(features, targets)

    val = parts.get("val")
    return DataSplits(
        name="diabetes",
        train=to_dataset(*parts["train"]),
        val=None if val is None else to_dataset(*val),
        test=to_dataset(*parts["test"]),
        num_classes=0,
        input_shape=(x.shape[1],),
        normalization=None,
        task="regression",
        target_normalization=(target_mean, target_std),
    )


def _random_split(
    x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed
    )
    parts = {"test": (x_test, y_test)}
    if val_fraction == 0:
        parts["train"] = (x_rest, y_rest)
        return parts
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1.0 - test_fraction), random_state=seed
    )
    parts.update(train=(x_train, y_train), val=(x_val, y_val))
    return parts


# ---------------------------------------------------------------- CIFAR


def cifar_transforms(name: str, train: bool, augment: bool = True) -> T.Compose:
    """The paper's CIFAR transforms, without the normalisation (the model applies it).

    Training (with ``augment``): ``RandomCrop(32, padding=4)``,
    ``RandomHorizontalFlip()``, ``ToTensor()``. Test (or ``augment=False``): ``ToTensor()``.
    Images stay in ``[0, 1]``; the per-channel statistics of :data:`CIFAR_STATS` are the
    splits' ``normalization``.
    """
    if name not in CIFAR_STATS:
        raise ValueError(f"unknown CIFAR name {name!r}; choose 'cifar10' or 'cifar100'")
    steps: list[Any] = [T.ToTensor()]
    if train and augment:
        steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *steps]
    return T.Compose(steps)


def load_cifar(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    augment: bool = True,
    val_size: int = 0,
    seed: int = 0,
) -> DataSplits:
    """CIFAR-10 or CIFAR-100 through ``torchvision.datasets.CIFAR10/CIFAR100``.

    The files are read from ``data_dir/cifar-10-batches-py`` (or
    ``data_dir/cifar-100-python``) and checked by torchvision's md5 sums. The
    training split uses :func:`cifar_transforms` (the paper's augmentation), the
    val and test splits the plain test transform.

    :param name: ``"cifar10"`` or ``"cifar100"``.
    :param data_dir: the folder holding the extracted archive (default
        :func:`default_data_dir`).
    :param download: fetch the archive if it is missing (needs internet access).
    :param augment: augment the training split (``False``: test transform everywhere).
    :param val_size: hold out this many training images, chosen by ``seed``, as a
        val split with the test transform (0: no val split).
    :param seed: seed of the val hold-out.
    :raises FileNotFoundError: the data are not on disk and ``download`` is false.
    :raises RuntimeError: the files are on disk but fail torchvision's md5 check.

    Usage::

        from pyro_otmdr.workflow.data import load_cifar

        splits = load_cifar("cifar10", data_dir="data", download=True)   # 170 MB, once
        train, _, test = splits.loaders(batch_size=128, num_workers=4)
        assert splits.input_shape == (3, 32, 32) and len(splits.test) == 10_000
    """
    if name not in _CIFAR_CLASSES:
        raise ValueError(f"unknown CIFAR name {name!r}; choose 'cifar10' or 'cifar100'")
    root = Path(default_data_dir() if data_dir is None else data_dir).expanduser()
    cls = _CIFAR_CLASSES[name]
    if not download:
        _require_files(cls, root, name)
    train_tf = cifar_transforms(name, train=True, augment=augment)
    test_tf = cifar_transforms(name, train=False)
    try:
        train = cls(str(root), train=True, transform=train_tf, download=download)
        test = cls(str(root), train=False, transform=test_tf)
    except RuntimeError as err:
        raise RuntimeError(
            f"{name} under {root / cls.base_folder} failed torchvision's integrity (md5) "
            f"check: the files are corrupted or incomplete. Delete that folder and fetch it "
            f"again with download=True (--download), or extract {cls.url} there."
        ) from err
    val = None
    if val_size:
        train, val = _hold_out(train, test_tf, val_size, seed)
    stats = tuple(torch.tensor(v).reshape(3, 1, 1) for v in CIFAR_STATS[name])
    return DataSplits(name, train, val, test, _CIFAR_NUM_CLASSES[name], (3, 32, 32), stats)


def _require_files(cls: type[datasets.CIFAR10], root: Path, name: str) -> None:
    folder = root / cls.base_folder
    wanted = [item[0] for item in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [file for file in wanted if not (folder / file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} is not on disk: {folder} lacks {', '.join(missing)}. Pass download=True "
            f"(the --download flag of the scripts) on a machine with internet access, or "
            f"download {cls.url} and extract it into {root}."
        )


def _hold_out(
    train: datasets.CIFAR10, test_tf: T.Compose, val_size: int, seed: int
) -> tuple[Subset, Subset]:
    if not 0 < val_size < len(train):
        raise ValueError(f"val_size must lie in [0, {len(train)}), got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    plain = copy.copy(train)  # shares the image array; only the transform differs
    plain.transform = test_tf
    plain.transforms = datasets.vision.StandardTransform(test_tf, None)
    return Subset(train, order[val_size:]), Subset(plain, order[:val_size])


# ---------------------------------------------------------------- FakeData


def load_fakedata(
    num_classes: int = 10,
    train_size: int = 1024,
    test_size: int = 256,
    image_size: tuple[int, int, int] = (3, 32, 32),
    seed: int = 0,
) -> DataSplits:
    """torchvision's ``FakeData``: random images for throughput runs (no learnable signal).

    The training split goes through a CIFAR-like augmentation (random crop with
    padding 4, flip, ``ToTensor``) so that data loading costs about what CIFAR's
    does; the test split through ``ToTensor``. Images are in ``[0, 1]``;
    ``normalization`` is ``(0.5, 0.5)`` per channel. Image ``i`` is a fixed function
    of ``i`` and ``seed``.

    Usage::

        from pyro_otmdr.workflow.data import load_fakedata

        splits = load_fakedata(num_classes=100, train_size=50_000)   # images made on access
        image, label = splits.train[0]
        assert image.shape == (3, 32, 32) and 0 <= label < 100 and len(splits.train) == 50_000
    """
    if min(num_classes, train_size, test_size, *image_size) < 1:
        raise ValueError("num_classes, train_size, test_size and image_size must be positive")
    channels, height, width = image_size
    to_tensor = [T.ToTensor()]
    train_tf = T.Compose([T.RandomCrop((height, width), padding=4), T.RandomHorizontalFlip()])
    train_tf = T.Compose([*train_tf.transforms, *to_tensor])
    offset = seed * (train_size + test_size)
    train = datasets.FakeData(train_size, image_size, num_classes, train_tf, random_offset=offset)
    test = datasets.FakeData(
        test_size, image_size, num_classes, T.Compose(to_tensor), random_offset=offset + train_size
    )
    stats = (torch.full((channels, 1, 1), 0.5), torch.full((channels, 1, 1), 0.5))
    return DataSplits("fakedata", train, None, test, num_classes, tuple(image_size), stats)


# ---------------------------------------------------------------- entry point

#: The names :func:`load_dataset` accepts.
DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10", "cifar100", "fakedata", "diabetes")
#: The regression data sets among :data:`DATASET_NAMES` (the others are classification).
REGRESSION_DATASETS: tuple[str, ...] = ("diabetes",)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> DataSplits:
    """Load a data set by name as :class:`DataSplits`.

    ``digits`` (:func:`load_digits_split`), ``diabetes`` (:func:`load_diabetes_split`,
    regression) and ``fakedata`` (:func:`load_fakedata`)
    need no files and ignore ``data_dir``/``download``; ``cifar10`` and ``cifar100``
    (:func:`load_cifar`) read ``data_dir``. Extra keyword arguments go to those
    functions (``val_fraction``, ``as_images``; ``val_size``, ``augment``;
    ``num_classes``, ``train_size``...).

    :param name: one of :data:`DATASET_NAMES`.
    :param data_dir: where CIFAR lives (default :func:`default_data_dir`).
    :param download: let torchvision download CIFAR if it is missing.
    :param seed: seed of the splits.

    Usage::

        from pyro_otmdr.workflow.data import load_dataset

        digits = load_dataset("digits", val_fraction=0.1)
        fake = load_dataset("fakedata", num_classes=100, train_size=64, test_size=16)
        assert (digits.num_classes, fake.num_classes) == (10, 100) and fake.val is None
        # CIFAR the same way, once on disk (download=True fetches it):
        # load_dataset("cifar100", data_dir="~/data", download=True, val_size=5000)
    """
    if name == "digits":
        return load_digits_split(seed=seed, **kwargs)
    if name == "diabetes":
        return load_diabetes_split(seed=seed, **kwargs)
    if name in _CIFAR_CLASSES:
        return load_cifar(name, data_dir, download, seed=seed, **kwargs)
    if name == "fakedata":
        return load_fakedata(seed=seed, **kwargs)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
