"""Tests of the shifted test sets and of evaluation under shift."""

import itertools
import json

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from pyro_otmdr.evaluation import evaluate
from pyro_otmdr.evaluation.shift import (
    SEVERITIES,
    SHIFTS,
    ShiftResult,
    evaluate_shift,
    shift_inputs,
)
from tests.evaluation.test_predictive import delta_fit, digits  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def images():
    return torch.tensor(load_digits().data[:200], dtype=torch.float32) / 16.0


@pytest.mark.parametrize("shift", SHIFTS)
def test_each_shift_is_seeded_boxed_and_grows_with_severity(shift, images):
    distances = []
    for severity in (0, *SEVERITIES):
        shifted = shift_inputs(images, shift, severity, seed=3)
        assert torch.equal(shifted, shift_inputs(images, shift, severity, seed=3))
        assert shifted.shape == images.shape and shifted.dtype == images.dtype
        assert shifted.min() >= 0 and shifted.max() <= 1
        distances.append((shifted - images).abs().mean().item())
    assert distances[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(distances)), distances


def test_the_seed_changes_random_shifts_only(images):
    for shift in ("gaussian_noise", "rotation"):
        assert not torch.equal(
            shift_inputs(images, shift, 3, seed=0), shift_inputs(images, shift, 3, seed=1)
        )
    for shift in ("gaussian_blur", "contrast"):
        assert torch.equal(
            shift_inputs(images, shift, 3, seed=0), shift_inputs(images, shift, 3, seed=1)
        )


def test_cifar_shaped_images_and_the_caller_s_tensor_are_untouched():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    for shift in SHIFTS:
        assert shift_inputs(x, shift, 5).shape == x.shape
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("snow", 1), "unknown shift 'snow'; choose from gaussian_noise"),
        (("rotation", 6), "severity must be an int in 0..5"),
    ],
)
def test_bad_arguments_say_what_is_allowed(args, match, images):
    with pytest.raises(ValueError, match=match):
        shift_inputs(images, *args)


def test_inputs_outside_the_box_and_odd_shapes_are_refused(images):
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        shift_inputs(images * 16, "contrast", 1)
    with pytest.raises(ValueError, match="flat square images"):
        shift_inputs(torch.rand(3, 10), "contrast", 1)


def test_evaluate_shift_on_a_trained_model(digits, delta_fit, tmp_path):  # noqa: F811
    model, guide = delta_fit
    x, y = digits["test"]
    result = evaluate_shift(model, guide, x, y, shifts=("gaussian_noise", "rotation"))
    clean = evaluate(model, guide, x, y).metrics
    for shift in ("gaussian_noise", "rotation"):
        assert sorted(result.metrics[shift]) == [0, 1, 2, 3, 4, 5]
        assert result.metrics[shift][0]["accuracy"] == pytest.approx(clean["accuracy"])
        assert result.metrics[shift][0]["nll"] == pytest.approx(clean["nll"])
    assert result.metrics["rotation"][5]["accuracy"] < clean["accuracy"]
    rows = [m for per in result.metrics.values() for s, m in per.items() if s]
    assert result.mean_over_shifts()["ece"] == pytest.approx(sum(r["ece"] for r in rows) / 10)
    saved = json.loads(result.to_json(tmp_path / "shift.json").read_text())
    assert saved["shifts"]["rotation"]["5"] == result.metrics["rotation"][5]
    dataset = result.to_dataset()
    assert dataset["nll"].sel(shift="rotation", severity=5) == result.metrics["rotation"][5]["nll"]
    with Image.open(result.plot(tmp_path / "shift.png")) as image:
        assert image.size == (880, 272)


def test_mean_over_shifts_ignores_the_clean_severity():
    one = {"accuracy": 1.0, "nll": 0.0, "ece": 0.0}
    two = {"accuracy": 0.5, "nll": 1.0, "ece": 0.25}
    result = ShiftResult({"contrast": {0: one, 1: two}})
    assert result.mean_over_shifts() == two
