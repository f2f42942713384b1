"""Classification metrics as small pure functions on tensors.

Every function takes predictive probabilities ``probs`` of shape ``(n, C)`` (rows sum to one) and
integer ``labels`` of shape ``(n,)`` with values in ``[0, C)``, and returns a 0-dim tensor on the
device of its inputs. Nothing here knows about Pyro: :func:`pyro_otmdr.evaluation.evaluate`
builds the mean posterior predictive and calls these.

Usage::

    import torch
    from pyro_otmdr.evaluation import metrics

    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    labels = torch.tensor([0, 0])
    assert metrics.accuracy(probs, labels) == 0.5
    print(metrics.ece(probs, labels, num_bins=10))  # tensor(0.3500)
"""

from __future__ import annotations

import torch

__all__ = [
    "accuracy",
    "apply_temperature",
    "auroc",
    "brier",
    "calibration_bins",
    "ece",
    "fit_temperature",
    "nll",
]


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``probs`` is ``(n, C)`` and ``labels`` holds ``n`` valid ints."""
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape (n, C), got {tuple(probs.shape)}")
    if labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels must have shape ({probs.shape[0]},) to match probs, got {tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("metrics need at least one example; got an empty batch")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    num_classes = probs.shape[1]
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose most probable class is the label.

    Usage::

        import torch
        from pyro_otmdr.evaluation.metrics import accuracy

        assert accuracy(torch.tensor([[0.2, 0.8]]), torch.tensor([1])) == 1.0
    """
    _check(probs, labels)
    return (probs.argmax(-1) == labels).to(probs.dtype).mean()


def nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log probability of the labels, ``-mean_i log probs[i, y_i]``.

    Probabilities are clamped at the dtype's smallest normal number so a zero gives a large finite
    value instead of ``inf``.

    Usage::

        import math
        import torch
        from pyro_otmdr.evaluation.metrics import nll

        value = nll(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))  # tensor(0.6931)
        assert math.isclose(value, math.log(2), rel_tol=1e-6)
    """
    _check(probs, labels)
    picked = probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return -picked.clamp_min(torch.finfo(probs.dtype).tiny).log().mean()


def brier(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class Brier score, ``mean_i sum_c (probs[i, c] - onehot(y_i)[c])**2``.

    It lies in ``[0, 2]``; a uniform prediction over ``C`` classes scores ``1 - 1/C``.

    Usage::

        import torch
        from pyro_otmdr.evaluation.metrics import brier

        assert brier(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == 2.0   # the worst score
        assert brier(torch.tensor([[0.5, 0.5]]), torch.tensor([1])) == 0.5  # uniform: 1 - 1/C
    """
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).to(probs.dtype)
    return (probs - onehot).square().sum(-1).mean()


def calibration_bins(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin accuracy, mean confidence and count for a reliability diagram.

    The confidence of an example is its largest probability. Bins are the ``num_bins`` equal-width
    intervals ``(k/B, (k+1)/B]`` (the first also holds a confidence of exactly 0). Empty bins report
    accuracy and confidence 0 with count 0.

    :returns: ``(bin_accuracy, bin_confidence, bin_count)``, each of shape ``(num_bins,)``.

    Usage::

        import torch
        from pyro_otmdr.evaluation.metrics import calibration_bins

        probs = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.58, 0.42]])
        labels = torch.tensor([0, 0, 1])
        acc, conf, count = calibration_bins(probs, labels, num_bins=10)
        assert count.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 1]
        assert acc[5] == 0.5 and acc[9] == 1.0      # bins (0.5, 0.6] and (0.9, 1.0]
    """
    _check(probs, labels)
    if not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).to(probs.dtype)
    index = (confidence * num_bins).ceil().long().sub(1).clamp(0, num_bins - 1)
    count = torch.zeros(num_bins, dtype=probs.dtype, device=probs.device)
    count.index_add_(0, index, torch.ones_like(confidence))
    acc_sum = torch.zeros_like(count).index_add_(0, index, correct)
    conf_sum = torch.zeros_like(count).index_add_(0, index, confidence)
    safe = count.clamp_min(1)
    return acc_sum / safe, conf_sum / safe, count


def ece(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> torch.Tensor:
    """Expected calibration error with ``num_bins`` equal-width confidence bins.

    ``ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|`` over the bins of
    :func:`calibration_bins`.

    Usage::

        import torch
        from pyro_otmdr.evaluation.metrics import ece

        value = ece(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]), num_bins=10)
        print(value)   # tensor(0.3500): (|1 - 0.9| + |0 - 0.6|) / 2
    """
    acc, conf, count = calibration_bins(probs, labels, num_bins)
    return (count / count.sum() * (acc - conf).abs()).sum()


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    sorted_values, order = values.sort()
    _, inverse, counts = torch.unique_consecutive(
        sorted_values, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def auroc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` for the binary ``targets`` (1 = positive).

    Computed as the Mann-Whitney statistic ``P(score_pos > score_neg) + 0.5 P(tie)``: ties get
    the average of their ranks, which matches ``sklearn.metrics.roc_auc_score``.

    :raises ValueError: if the shapes differ or ``targets`` holds a single class.

    Usage::

        import torch
        from pyro_otmdr.evaluation.metrics import auroc

        assert auroc(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([1, 0, 0])) == 1.0
        assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5   # a tie
    """
    if scores.dim() != 1 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must be 1-D of equal length, got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    positive = targets.bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "auroc needs both positive and negative targets; only one class is present"
        )
    ranks = _average_ranks(scores.to(torch.float64))
    rank_sum = ranks[positive].sum()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def apply_temperature(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Temperature-scaled probabilities ``softmax(logits / temperature)``.

    ``logits`` may be any log-probabilities, e.g. ``log(mean_probs)`` of a posterior predictive.

    Usage::

        import torch
        from pyro_otmdr.evaluation.metrics import apply_temperature

        mean_probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
        probs_ts = apply_temperature(mean_probs.log(), 1.7)
        assert (probs_ts.max(-1).values < mean_probs.max(-1).values).all()   # T > 1 softens
    """
    if float(temperature) <= 0:
        raise ValueError(f"temperature must be positive, got {float(temperature)}")
    return torch.softmax(logits / temperature, dim=-1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """Scalar temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on ``labels``.

    Optimises ``log T`` (so ``T`` stays positive) with L-BFGS and a strong-Wolfe line search, in
    float64 on a detached copy of ``logits``; gradients are enabled locally, so this also works
    inside ``torch.no_grad()``. Fit it on held-out data, never on the test set.

    Usage::

        import torch
        from pyro_otmdr.evaluation.metrics import apply_temperature, fit_temperature, nll

        logits = 5 * torch.randn(200, 3)                 # an overconfident classifier
        labels = torch.distributions.Categorical(logits=logits / 5).sample()
        val_probs, test_probs = logits[:100].softmax(-1), logits[100:].softmax(-1)
        T = fit_temperature(val_probs.log(), labels[:100])
        test_probs_ts = apply_temperature(test_probs.log(), T)
        assert T > 1 and nll(test_probs_ts, labels[100:]) < nll(test_probs, labels[100:])
    """
    _check(torch.empty_like(logits, dtype=torch.float32), labels)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    z = logits.detach().to(torch.float64)
    z = torch.where(torch.isfinite(z), z, torch.full_like(z, torch.finfo(torch.float32).min))
    target = labels.detach().long().to(z.device)
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())
