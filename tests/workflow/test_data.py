"""pyro_otmdr.workflow.data: digits, CIFAR on a tiny archive in the real format, FakeData."""

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets
from torchvision import transforms as T

from pyro_otmdr.workflow.data import (
    DATASET_NAMES,
    DataSplits,
    cifar_transforms,
    load_cifar,
    load_dataset,
    load_digits_split,
)
from tests.conftest import EPS32

# ------------------------------------------------------------------ digits


def test_digits_split_sizes_in_the_unit_box_and_fixed_by_seed():
    splits = load_digits_split(seed=0, val_fraction=0.15, test_fraction=0.2)
    x, y = splits.train.tensors
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    assert abs(sizes[2] - 0.2 * 1797) <= 1 and abs(sizes[1] - 0.15 * 1797) <= 1
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (64,)
    assert splits.num_classes == 10 and splits.input_shape == (64,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, (x * 16).round())  # pixels / 16
    mean, std = splits.normalization
    standardised = (x - mean) / std  # what the model's Normalize computes
    # eps-derived: float32 means of ~1170 standardised pixels (|z| up to ~35), float32 eps
    # times ~84 (observed ~1 eps)
    tol = 84 * EPS32
    assert torch.allclose(standardised.mean(0), torch.zeros(64), rtol=0, atol=tol)
    varying = x.std(0) > 0
    assert torch.allclose(
        standardised.std(0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=tol
    )
    assert torch.equal(std[~varying], torch.full((int((~varying).sum()),), 1 / 16))
    assert set(y.tolist()) == set(range(10))
    again = load_digits_split(seed=0, val_fraction=0.15, test_fraction=0.2)
    assert torch.equal(again.test.tensors[0], splits.test.tensors[0])
    other = load_digits_split(seed=1, val_fraction=0.15, test_fraction=0.2)
    assert not torch.equal(other.test.tensors[1], splits.test.tensors[1])


def test_digits_as_images_and_without_val():
    flat = load_digits_split(seed=3)
    images = load_digits_split(seed=3, as_images=True)
    assert images.input_shape == (1, 8, 8) and images.train.tensors[0].shape[1:] == (1, 8, 8)
    assert torch.equal(images.test.tensors[0].flatten(1), flat.test.tensors[0])
    no_val = load_digits_split(seed=3, val_fraction=0.0)
    assert no_val.val is None and len(no_val.train) == len(flat.train) + len(flat.val)
    assert torch.equal(no_val.test.tensors[1], flat.test.tensors[1])  # same test split


@pytest.mark.parametrize(
    "kwargs", [dict(test_fraction=0.0), dict(val_fraction=0.5, test_fraction=0.5)]
)
def test_digits_bad_fractions(kwargs):
    with pytest.raises(ValueError, match="fraction"):
        load_digits_split(**kwargs)


def test_loaders():
    splits = load_dataset("digits", val_fraction=0.0)
    train, val, test = splits.loaders(batch_size=100, test_batch_size=500, seed=0)
    assert val is None
    xb, yb = next(iter(train))
    assert xb.shape == (100, 64) and yb.shape == (100,)
    assert len(test) == 1
    first = next(iter(splits.loaders(batch_size=100, seed=0).train))[1]
    assert torch.equal(first, yb)  # the shuffle is fixed by the seed


# ------------------------------------------------------------------ CIFAR on a tiny archive


def _write_pickle(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _fake_cifar10(root: Path, per_batch: int = 4, test_size: int = 6) -> dict:
    """Write cifar-10-batches-py in the real python format; return {file: md5}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for i in range(1, 6):
        batch = {"data": _images(rng, per_batch), "labels": rng.integers(0, 10, per_batch).tolist()}
        md5[f"data_batch_{i}"] = _write_pickle(folder / f"data_batch_{i}", batch)
    test = {"data": _images(rng, test_size), "labels": rng.integers(0, 10, test_size).tolist()}
    md5["test_batch"] = _write_pickle(folder / "test_batch", test)
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    md5["batches.meta"] = _write_pickle(folder / "batches.meta", meta)
    return md5


def _fake_cifar100(root: Path, train_size: int = 10, test_size: int = 4) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    md5 = {}
    for name, n in (("train", train_size), ("test", test_size)):
        fine = rng.integers(0, 100, n).tolist()
        part = {
            "data": _images(rng, n),
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
        }
        md5[name] = _write_pickle(folder / name, part)
    meta = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["c"] * 20}
    md5["meta"] = _write_pickle(folder / "meta", meta)
    return md5


def _expect_md5(monkeypatch, cls, md5: dict) -> None:
    """Point torchvision's expected md5 sums at the files the test wrote (the check stays on)."""
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})


def test_cifar10_real_loader_on_tiny_archive(tmp_path, monkeypatch):
    _expect_md5(monkeypatch, datasets.CIFAR10, _fake_cifar10(tmp_path))
    splits = load_dataset("cifar10", data_dir=tmp_path)
    assert isinstance(splits.train, datasets.CIFAR10)
    assert len(splits.train) == 20 and len(splits.test) == 6 and splits.val is None
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 10
    assert splits.train.classes[0] == "class0"
    names = [type(t).__name__ for t in splits.train.transform.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor"]
    assert [type(t).__name__ for t in splits.test.transform.transforms] == ["ToTensor"]
    raw = torch.as_tensor(splits.test.data[0]).permute(2, 0, 1).float() / 255
    assert torch.allclose(splits.test[0][0], raw, atol=1e-6)
    mean, std = splits.normalization
    assert torch.allclose(mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert torch.allclose(std.flatten(), torch.tensor([0.2470, 0.2435, 0.2616]))
    train, _, _ = splits.loaders(batch_size=8, seed=0)
    xb, yb = next(iter(train))
    assert xb.shape == (8, 3, 32, 32) and yb.dtype == torch.int64


def test_cifar100_real_loader_with_val_hold_out(tmp_path, monkeypatch):
    _expect_md5(monkeypatch, datasets.CIFAR100, _fake_cifar100(tmp_path))
    splits = load_cifar("cifar100", tmp_path, val_size=3, seed=0)
    assert splits.num_classes == 100
    assert len(splits.train) == 7 and len(splits.val) == 3 and len(splits.test) == 4
    train_indices, val_indices = set(splits.train.indices), set(splits.val.indices)
    assert not train_indices & val_indices
    assert splits.val.dataset.data is splits.train.dataset.data  # no second copy of the images
    assert len(splits.val.dataset.transform.transforms) == 1  # the test transform (ToTensor)
    assert len(splits.train.dataset.transform.transforms) == 3
    assert 0 <= splits.val[0][1] < 100


def test_download_true_uses_files_already_on_disk(tmp_path, monkeypatch):
    _expect_md5(monkeypatch, datasets.CIFAR100, _fake_cifar100(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(datasets.cifar, "download_and_extract_archive", no_network)
    assert len(load_dataset("cifar100", data_dir=tmp_path, download=True).train) == 10


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_cifar_says_how_to_get_it(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    assert "--download" in str(info.value) and "cs.toronto.edu" in str(info.value)


def test_integrity_check_stays_on(tmp_path):
    _fake_cifar10(tmp_path)  # files present, but not torchvision's expected md5 sums
    with pytest.raises(RuntimeError, match="md5"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_transforms():
    assert len(cifar_transforms("cifar100", train=True).transforms) == 3
    assert len(cifar_transforms("cifar100", train=True, augment=False).transforms) == 1
    crop = cifar_transforms("cifar10", train=True).transforms[0]
    assert isinstance(crop, T.RandomCrop) and crop.size == (32, 32) and crop.padding == 4
    with pytest.raises(ValueError, match="cifar10"):
        cifar_transforms("svhn", train=True)


# ------------------------------------------------------------------ FakeData and the entry point


def test_fakedata():
    splits = load_dataset("fakedata", num_classes=100, train_size=16, test_size=8)
    assert isinstance(splits, DataSplits) and isinstance(splits.train, datasets.FakeData)
    assert len(splits.train) == 16 and len(splits.test) == 8 and splits.num_classes == 100
    image, label = splits.test[3]
    assert image.shape == (3, 32, 32) and 0 <= label < 100
    assert torch.equal(splits.test[3][0], image)  # a fixed function of the index
    assert not torch.equal(splits.train[3][0], image)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="digits, cifar10, cifar100, fakedata, diabetes"):
        load_dataset("mnist")
    assert DATASET_NAMES == ("digits", "cifar10", "cifar100", "fakedata", "diabetes")


# ------------------------------------------------------------------ diabetes


def test_diabetes_is_standardised_with_the_training_split_and_fixed_by_seed():
    from sklearn.datasets import load_diabetes

    from pyro_otmdr.workflow.data import REGRESSION_DATASETS, load_diabetes_split

    splits = load_dataset("diabetes", seed=0)
    assert REGRESSION_DATASETS == ("diabetes",) and splits.is_regression
    assert splits.task == "regression" and splits.num_classes == 0 and splits.normalization is None
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 442 and abs(sizes[2] - 0.2 * 442) <= 1 and abs(sizes[1] - 0.15 * 442) <= 1
    x, y = splits.train.tensors
    assert x.shape == (sizes[0], 10) and y.shape == (sizes[0],) and y.dtype == torch.float32
    assert splits.input_shape == (10,)
    # float32 means of ~290 standardised values: float32 eps times ~290
    tol = 290 * EPS32
    assert torch.allclose(x.mean(0), torch.zeros(10), atol=tol)
    ones = torch.ones(10, dtype=torch.float64)  # numpy's std: the population one
    assert torch.allclose(x.double().std(0, unbiased=False), ones, atol=tol)
    assert abs(float(y.mean())) < tol and abs(float(y.double().std(unbiased=False)) - 1) < tol
    # the target's original units come back with the stored mean and std
    mean, std = splits.target_normalization
    raw = load_diabetes(scaled=False).target
    originals = sorted(round(float(mean + std * t), 3) for t in y.double())
    assert set(originals) <= {round(float(v), 3) for v in raw}
    again = load_diabetes_split(seed=0)
    assert torch.equal(again.test.tensors[1], splits.test.tensors[1])
    other = load_diabetes_split(seed=1)
    assert not torch.equal(other.test.tensors[1], splits.test.tensors[1])
    no_val = load_diabetes_split(seed=0, val_fraction=0.0)
    assert no_val.val is None and len(no_val.train) == sizes[0] + sizes[1]
    with pytest.raises(ValueError, match="below 1"):
        load_diabetes_split(val_fraction=0.5, test_fraction=0.5)
