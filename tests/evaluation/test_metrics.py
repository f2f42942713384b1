"""Tests of pyro_otmdr.evaluation.metrics against sklearn and against numbers derived by hand."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from pyro_otmdr.evaluation import metrics

# Five examples, three classes; confidences stay away from the bin edges of 5 bins.
HAND_PROBS = torch.tensor(
    [
        [0.70, 0.20, 0.10],  # y=0, conf 0.70 -> bin (0.6, 0.8], correct
        [0.30, 0.55, 0.15],  # y=2, conf 0.55 -> bin (0.4, 0.6], wrong (predicts 1)
        [0.50, 0.30, 0.20],  # y=0, conf 0.50 -> bin (0.4, 0.6], correct
        [0.15, 0.20, 0.65],  # y=2, conf 0.65 -> bin (0.6, 0.8], correct
        [0.90, 0.05, 0.05],  # y=1, conf 0.90 -> bin (0.8, 1.0], wrong (predicts 0)
    ],
    dtype=torch.float64,
)
HAND_LABELS = torch.tensor([0, 2, 0, 2, 1])


def _random_problem(n=500, num_classes=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, num_classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return torch.softmax(logits, -1), labels


def test_accuracy_matches_sklearn():
    probs, labels = _random_problem()
    expected = accuracy_score(labels.numpy(), probs.argmax(-1).numpy())
    assert metrics.accuracy(probs, labels).item() == pytest.approx(expected, abs=1e-12)
    assert metrics.accuracy(HAND_PROBS, HAND_LABELS).item() == pytest.approx(3 / 5)


def test_nll_matches_sklearn_log_loss():
    probs, labels = _random_problem()
    expected = log_loss(labels.numpy(), probs.numpy(), labels=list(range(probs.shape[1])))
    assert metrics.nll(probs, labels).item() == pytest.approx(expected, rel=1e-10)


def test_nll_of_zero_probability_is_finite():
    probs = torch.tensor([[1.0, 0.0]])
    assert torch.isfinite(metrics.nll(probs, torch.tensor([1])))


def test_brier_hand_computed():
    # per example sum_c (p_c - onehot_c)^2:
    # 0.3^2+0.2^2+0.1^2                = 0.14
    # 0.3^2+0.55^2+0.85^2              = 0.09+0.3025+0.7225 = 1.115
    # 0.5^2+0.3^2+0.2^2                = 0.38
    # 0.15^2+0.2^2+0.35^2              = 0.0225+0.04+0.1225 = 0.185
    # 0.9^2+0.95^2+0.05^2              = 0.81+0.9025+0.0025 = 1.715
    # mean = 3.535 / 5                 = 0.707
    assert metrics.brier(HAND_PROBS, HAND_LABELS).item() == pytest.approx(0.707, abs=1e-12)


def test_brier_extremes():
    labels = torch.tensor([0, 1])
    perfect = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert metrics.brier(perfect, labels).item() == 0.0  # exact: every term is 0
    assert metrics.brier(perfect.flip(0), labels).item() == pytest.approx(2.0)
    uniform = torch.full((2, 3), 1 / 3, dtype=torch.float64)  # float64: 1/3 is not exact
    assert metrics.brier(uniform, labels).item() == pytest.approx(1 - 1 / 3)


def test_ece_hand_computed():
    # bin (0.4,0.6]: n=2, acc 1/2, conf (0.55+0.50)/2 = 0.525 -> 2/5 * 0.025 = 0.01
    # bin (0.6,0.8]: n=2, acc 1,   conf (0.70+0.65)/2 = 0.675 -> 2/5 * 0.325 = 0.13
    # bin (0.8,1.0]: n=1, acc 0,   conf 0.90                  -> 1/5 * 0.9   = 0.18
    # ECE = 0.32
    assert metrics.ece(HAND_PROBS, HAND_LABELS, num_bins=5).item() == pytest.approx(0.32)
    acc, conf, count = metrics.calibration_bins(HAND_PROBS, HAND_LABELS, num_bins=5)
    torch.testing.assert_close(count, torch.tensor([0.0, 0.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(acc, torch.tensor([0.0, 0.0, 0.5, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        conf, torch.tensor([0.0, 0.0, 0.525, 0.675, 0.9], dtype=torch.float64)
    )


def test_ece_single_bin_is_gap_of_means():
    probs, labels = _random_problem(seed=3)
    expected = abs(metrics.accuracy(probs, labels).item() - probs.max(-1).values.mean().item())
    assert metrics.ece(probs, labels, num_bins=1).item() == pytest.approx(expected)


def test_auroc_matches_sklearn_without_ties():
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(300, generator=generator)
    targets = (torch.rand(300, generator=generator) < scores).long()
    expected = roc_auc_score(targets.numpy(), scores.numpy())
    assert metrics.auroc(scores, targets).item() == pytest.approx(expected, abs=1e-12)


def test_auroc_matches_sklearn_with_many_ties():
    generator = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 4, (400,), generator=generator).double()
    targets = torch.randint(0, 2, (400,), generator=generator)
    expected = roc_auc_score(targets.numpy(), scores.numpy())
    assert metrics.auroc(scores, targets).item() == pytest.approx(expected, abs=1e-12)


def test_auroc_hand_computed_tie():
    # positive/negative pairs: (.9,.8)=1, (.9,.3)=1, (.8,.8)=1/2, (.8,.3)=1 -> 3.5 / 4
    scores = torch.tensor([0.9, 0.8, 0.8, 0.3])
    targets = torch.tensor([1, 1, 0, 0])
    assert metrics.auroc(scores, targets).item() == pytest.approx(0.875)


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both positive and negative"):
        metrics.auroc(torch.rand(5), torch.ones(5))


def _overconfident(n, seed):
    generator = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(n, 5, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=generator).squeeze(-1)
    return 10.0 * true_logits, labels, true_logits


def test_temperature_scaling_fixes_overconfidence():
    val_logits, val_labels, _ = _overconfident(4000, seed=0)
    test_logits, test_labels, _ = _overconfident(4000, seed=1)
    with torch.no_grad():  # fit_temperature must enable grad on its own
        temperature = metrics.fit_temperature(val_logits, val_labels)
    assert temperature > 1.0
    assert 7.0 < temperature < 14.0  # the logits were sharpened by a factor of 10
    before = metrics.nll(torch.softmax(test_logits, -1), test_labels)
    after = metrics.nll(metrics.apply_temperature(test_logits, temperature), test_labels)
    assert after < before - 0.5


def test_temperature_of_calibrated_model_is_near_one():
    _, labels, true_logits = _overconfident(8000, seed=4)
    assert metrics.fit_temperature(true_logits, labels) == pytest.approx(1.0, abs=0.1)


def test_temperature_minimises_nll_on_a_grid():
    logits, labels, _ = _overconfident(1000, seed=5)
    temperature = metrics.fit_temperature(logits, labels)
    grid = np.linspace(0.5 * temperature, 1.5 * temperature, 41)
    losses = [metrics.nll(metrics.apply_temperature(logits, t), labels).item() for t in grid]
    fitted = metrics.nll(metrics.apply_temperature(logits, temperature), labels).item()
    assert fitted <= min(losses) + 1e-9


def test_apply_temperature_one_is_softmax():
    logits = torch.randn(4, 3)
    torch.testing.assert_close(metrics.apply_temperature(logits, 1.0), torch.softmax(logits, -1))
    with pytest.raises(ValueError, match="positive"):
        metrics.apply_temperature(logits, 0.0)


@pytest.mark.parametrize(
    "fn", [metrics.accuracy, metrics.nll, metrics.brier, metrics.ece, metrics.calibration_bins]
)
def test_bad_inputs_raise(fn):
    probs = torch.full((3, 4), 0.25)
    with pytest.raises(ValueError, match="labels must lie"):
        fn(probs, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="labels must lie"):
        fn(probs, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="shape"):
        fn(probs, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        fn(probs[0], torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        fn(probs, torch.tensor([0.0, 1.0, 2.0]))


def test_bad_num_bins_and_max_iter():
    with pytest.raises(ValueError, match="num_bins"):
        metrics.ece(HAND_PROBS, HAND_LABELS, num_bins=0)
    with pytest.raises(ValueError, match="max_iter"):
        metrics.fit_temperature(HAND_PROBS.log(), HAND_LABELS, max_iter=0)
