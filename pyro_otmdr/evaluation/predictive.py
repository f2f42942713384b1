"""Posterior-predictive evaluation of Pyro classifiers and regression models: metrics, ArviZ
export, calibration plots.

:func:`evaluate` runs the model once per posterior draw over the test set, in chunks, on the
model's device, and keeps only summaries: the mean predictive probabilities (a classifier) or
each draw's location and scale of every test point (regression), the per-draw log-likelihood of
every test point and one label or target sampled from every draw's predictive. The draws are
those of :mod:`pyro_otmdr.bayes.replay`: the point of an ``AutoDelta``, every member of an
ensemble, or ``num_samples`` draws of any other guide.

Usage::

    import torch
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.evaluation import evaluate

    model = bayesian(torch.nn.Linear(4, 3), num_data=32)
    guide = AutoNormal(model)
    x_val, y_val = torch.rand(16, 4), torch.randint(3, (16,))
    x_test, y_test = torch.rand(32, 4), torch.randint(3, (32,))
    guide(x_val, y_val)                        # set the autoguide up (train it with SVI first)
    result = evaluate(model, guide, x_test, y_test, num_samples=4, x_val=x_val, y_val=y_val)
    print(result.metrics)                      # accuracy, nll, brier, ece, auroc, *_ts
    tree = result.to_datatree()                # ArviZ: az.loo(tree), az.summary(tree)
    result.plot_calibration("calibration.png")  # + calibration_pava.png
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..bayes.replay import (
    draw_kind,
    guide_device,
    latent_values,
    observed_likelihood,
    observed_node,
    seeded_rng,
    site_log_probs,
    site_regression,
)
from . import metrics, regression
from .result import EvaluationResult

__all__ = ["EvaluationResult", "evaluate"]


def _check_inputs(name: str, x: Any) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with a non-zero number of examples."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty tensor with examples on dim 0")


def _check_split(name: str, x: Any, y: Any | None) -> None:
    """Raise ``ValueError`` unless ``x`` (and its integer labels ``y``) fit a classifier."""
    _check_inputs(name, x)
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dim() != 1:
        raise ValueError(f"labels for {name} must be a 1-D tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels for {name} must be integers, got dtype {y.dtype}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} has {x.shape[0]} examples but its labels have {y.shape[0]}; pass one "
            "label per example"
        )
    if bool((y < 0).any()):
        raise ValueError(f"labels for {name} must be >= 0, got minimum {int(y.min())}")


def _check_targets(x: torch.Tensor, y: Any, likelihood: str, site: str) -> None:
    """Raise ``ValueError`` unless ``y`` holds one finite real target per example of ``x``."""
    kind = {"normal": "Normal", "studentt": "StudentT"}[likelihood]
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"regression targets y must be a tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        hint = "; flatten it with y.reshape(-1)" if y.numel() == x.shape[0] else ""
        raise ValueError(
            f"regression targets y must have shape ({x.shape[0]},), one per example of x, got "
            f"{tuple(y.shape)}{hint}"
        )
    if not y.dtype.is_floating_point:
        raise ValueError(
            f"site {site!r} is a {kind} (a regression model): its targets y must be floating "
            f"point, got dtype {y.dtype}; integer class labels go with a Categorical site"
        )
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        raise ValueError(
            f"regression targets y must be finite: {int(bad.sum())} of {len(y)} are NaN or "
            f"infinite (the first at index {int(bad.nonzero()[0])})"
        )


def _check_args(x, x_val, y_val, x_ood, num_samples, batch_size, num_bins, site) -> None:
    """The checks that do not depend on the kind of model (classifier or regression)."""
    _check_inputs("x", x)
    if (x_val is None) != (y_val is None):
        raise ValueError("pass x_val and y_val together (temperature scaling needs both)")
    if x_val is not None:
        _check_inputs("x_val", x_val)
    if x_ood is not None:
        _check_inputs("x_ood", x_ood)
    counts = {"num_samples": num_samples, "batch_size": batch_size, "num_bins": num_bins}
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(site, str) or not site:
        raise ValueError(f"site must be the name of the observed sample site, got {site!r}")


def _sample_labels(log_probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample of one label per row, given one uniform number per row."""
    cdf = log_probs.exp().cumsum(-1)
    return (cdf < uniform.unsqueeze(-1)).sum(-1).clamp_max(log_probs.shape[-1] - 1)


class _Accumulator:
    """Running sums for one split: the probabilities, and with ``num_draws`` per-draw summaries.

    The per-draw summaries (log-likelihood as float32, sampled label, accuracy) go straight into
    preallocated CPU tensors, one row per draw. Labels, when given, are checked against the
    number of classes of the model.
    """

    def __init__(self, x, y, device: torch.device, num_draws: int | None = None) -> None:
        self.x, self.y, self.device = x, y, device
        self.prob_sum: torch.Tensor | None = None
        self.per_draw = num_draws is not None
        if self.per_draw:
            n = x.shape[0]
            self.log_lik = torch.empty(num_draws, n)
            self.samples = torch.empty(num_draws, n, dtype=torch.long)
            self.draw_accuracy = torch.empty(num_draws, dtype=torch.float64)

    def add_draw(self, index, model, latents, site, batch_size, uniform) -> None:
        """Run draw ``index`` over every chunk of this split and fold it into the sums."""
        n = self.x.shape[0]
        if self.per_draw:
            log_lik = torch.empty(n, device=self.device)
            samples = torch.empty(n, dtype=torch.long, device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = self.x[start:stop].to(self.device, non_blocking=True)
            log_probs = site_log_probs(model, latents, x, site)
            self._add_probs(start, stop, log_probs)
            if self.y is not None:
                y = self._labels(start, stop, log_probs.shape[-1])
            if self.per_draw:
                log_lik[start:stop] = log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
                samples[start:stop] = _sample_labels(log_probs, uniform[start:stop])
                correct += (log_probs.argmax(-1) == y).sum()
        if self.per_draw:
            self.log_lik[index] = log_lik.cpu()
            self.samples[index] = samples.cpu()
            self.draw_accuracy[index] = correct.item() / n

    def _add_probs(self, start: int, stop: int, log_probs: torch.Tensor) -> None:
        if self.prob_sum is None:
            shape = (self.x.shape[0], log_probs.shape[-1])
            self.prob_sum = torch.zeros(shape, dtype=torch.float64, device=self.device)
        elif self.prob_sum.shape[-1] != log_probs.shape[-1]:
            raise ValueError("the number of classes changed between chunks or draws")
        self.prob_sum[start:stop] += log_probs.exp()

    def _labels(self, start: int, stop: int, num_classes: int) -> torch.Tensor:
        y = self.y[start:stop].to(self.device, non_blocking=True).long()
        if bool((y >= num_classes).any()):
            raise ValueError(
                f"labels must be < the number of classes ({num_classes}); got {int(y.max())}"
            )
        return y

    def mean_probs(self) -> torch.Tensor:
        """Mean predictive probabilities on the CPU, renormalised against rounding."""
        return (self.prob_sum / self.prob_sum.sum(-1, keepdim=True)).cpu()


class _RegressionAccumulator:
    """Every draw's location and scale (and StudentT ``df``) of each test point, on the CPU.

    The mixture over the draws is only formed at the end (:meth:`metrics`), so memory is one
    float64 per draw and test point for each of them, like the per-draw log-likelihood.
    """

    def __init__(self, x, y, device: torch.device, num_draws: int, likelihood: str) -> None:
        self.x, self.y, self.device, self.likelihood = x, y, device, likelihood
        n = x.shape[0]
        self.loc = torch.empty(num_draws, n, dtype=torch.float64)
        self.scale = torch.empty(num_draws, n, dtype=torch.float64)
        self.df = (
            torch.empty(num_draws, n, dtype=torch.float64) if likelihood == "studentt" else None
        )
        self.samples = torch.empty(num_draws, n, dtype=torch.float64)

    def add_draw(self, index, model, latents, site, batch_size, uniform) -> None:
        """Run draw ``index`` over every chunk and keep its locations, scales and one sample."""
        n = self.x.shape[0]
        loc = torch.empty(n, device=self.device, dtype=torch.float64)
        scale = torch.empty_like(loc)
        df = torch.empty_like(loc) if self.df is not None else None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = self.x[start:stop].to(self.device, non_blocking=True)
            likelihood, chunk_loc, chunk_scale, chunk_df = site_regression(model, latents, x, site)
            if likelihood != self.likelihood:
                raise ValueError(
                    f"site {site!r} changed its distribution between draws or chunks: "
                    f"{self.likelihood} and {likelihood}"
                )
            loc[start:stop], scale[start:stop] = chunk_loc, chunk_scale
            if df is not None:
                df[start:stop] = chunk_df
        self.loc[index], self.scale[index] = loc.cpu(), scale.cpu()
        if df is not None:
            self.df[index] = df.cpu()
        u = uniform.double().cpu().clamp(1e-12, 1 - 1e-12)  # inverse-CDF: one sample per point
        draw_df = None if df is None else self.df[index]
        self.samples[index] = regression.component_quantile(
            u, self.loc[index], self.scale[index], draw_df
        )

    def log_likelihood(self, targets: torch.Tensor) -> torch.Tensor:
        """``log p(y_i | x_i, theta_s)`` of every draw and test point, ``(n_draws, n)``."""
        return regression.component_log_prob(targets, self.loc, self.scale, self.df)

    def metrics(self, targets: torch.Tensor) -> dict[str, float]:
        """:func:`~.regression.regression_metrics` of the mixture of the draws."""
        return regression.regression_metrics(targets, self.loc, self.scale, self.df)


def _run_draws(
    model, guide, x, make_splits, kind, num_draws, site, batch_size, device, base_seed
) -> tuple[str, dict]:
    """Fold every posterior draw into the split accumulators, one draw at a time.

    The accumulators are made by ``make_splits(likelihood)`` once the first draw's latents are
    known: the model is run on two test points under them to read the observed site's
    distribution (``categorical``, ``normal`` or ``studentt``), after the draw's uniform numbers
    are taken, so that draw 0's labels and targets are those of every other draw's stream.
    """
    first = x[:batch_size].to(device, non_blocking=True)
    splits: dict | None = None
    likelihood = ""
    for index in range(num_draws):
        with seeded_rng(base_seed + index, device):
            latents = latent_values(guide, kind, index, first)
            uniform = torch.rand(x.shape[0], device=device)
            if splits is None:
                node = observed_node(model, latents, first[:2], site)
                likelihood = observed_likelihood(node["fn"], site)
                splits = make_splits(likelihood)
            for split in splits.values():
                split.add_draw(index, model, latents, site, batch_size, uniform)
    return likelihood, splits


def _safe_auroc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AUROC, or ``nan`` when only one class is present."""
    if targets.all() or not targets.any():
        return math.nan
    return float(metrics.auroc(scores, targets))


def _all_metrics(probs, labels, num_bins, *, val=None, ood_probs=None) -> dict[str, float]:
    """All scalar metrics of the mean predictive (float64 on the CPU)."""
    p = probs.double()
    confidence, predicted = p.max(-1)
    out = {
        "accuracy": float(metrics.accuracy(p, labels)),
        "nll": float(metrics.nll(p, labels)),
        "brier": float(metrics.brier(p, labels)),
        "ece": float(metrics.ece(p, labels, num_bins)),
        "auroc": _safe_auroc(confidence, predicted == labels),
    }
    if ood_probs is not None:
        ood_confidence = ood_probs.double().max(-1).values
        scores = torch.cat([confidence, ood_confidence])
        targets = torch.cat([torch.ones_like(confidence), torch.zeros_like(ood_confidence)])
        out["auroc_ood"] = _safe_auroc(scores, targets.bool())
    if val is not None:
        val_probs, val_labels = val
        tiny = torch.finfo(torch.float64).tiny
        temperature = metrics.fit_temperature(val_probs.double().clamp_min(tiny).log(), val_labels)
        scaled = metrics.apply_temperature(p.clamp_min(tiny).log(), temperature)
        out["temperature"] = temperature
        out["nll_ts"] = float(metrics.nll(scaled, labels))
        out["brier_ts"] = float(metrics.brier(scaled, labels))
        out["ece_ts"] = float(metrics.ece(scaled, labels, num_bins))
    return out


def evaluate(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_samples: int = 32,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    x_ood: torch.Tensor | None = None,
    site: str = "obs",
    num_bins: int = 15,
) -> EvaluationResult:
    """Evaluate a Pyro classifier's or regression model's posterior predictive on a test set.

    ``model(x, y=None)`` must sample the site ``site`` from a ``Categorical`` (a classifier), or
    from a ``Normal`` or ``StudentT`` (regression; scales may differ per example); masks, plates
    and ``Independent`` are unwrapped. For each draw the latents come from the guide (see the module
    docstring); the model is then run as
    ``poutine.trace(poutine.condition(model, data=latents)).get_trace(x_chunk)`` for every chunk
    of ``batch_size`` test points, so all chunks of one draw share the same latents. Latent sites
    must be global (not per example). Everything runs under ``torch.no_grad()`` on ``device``
    (default: the device of the guide's parameters) and no parameter is changed; only the
    summaries move to the CPU, so memory does not grow with ``num_samples``.

    Each draw uses its own seeded RNG stream derived from the global torch RNG, so results depend
    on ``pyro.set_rng_seed`` but not on ``batch_size``; the global RNG advances by one draw only.

    Regression: each draw gives a Normal (or StudentT) per test point and the predictive is their
    equal-weight mixture; the metrics are those of
    :func:`~pyro_otmdr.evaluation.regression.regression_metrics` (``rmse``, ``mae`` of the
    mixture's mean, ``nll`` of its density, ``crps``, ``coverage_50/90/95`` of its central
    intervals, ``interval_width_90``, ``calibration_error``), in the targets' units, and the
    result keeps every draw's ``loc`` and ``scale``. ``x_val``/``y_val`` (temperature scaling)
    and ``x_ood`` are a classifier's and are refused.

    :param model: the model, called as ``model(x_chunk)``.
    :param guide: ``AutoDelta``, an ensemble guide, or any guide whose trace holds the latents.
    :param x: test inputs, examples on dim 0.
    :param y: integer test labels in ``[0, C)``; for regression, floating-point targets of
        shape ``(len(x),)``.
    :param num_samples: draws for guides that are neither ``AutoDelta`` nor an ensemble.
    :param batch_size: test points per forward pass.
    :param device: where to run; default the guide's device.
    :param x_val: validation inputs for temperature scaling (with ``y_val``).
    :param y_val: validation labels.
    :param x_ood: out-of-distribution inputs; adds ``auroc_ood`` (max-probability score).
    :param site: name of the observed site.
    :param num_bins: equal-width confidence bins of the ECE.
    :raises ValueError: for mismatched lengths, labels out of range, a missing site or one that
        is neither categorical nor Normal/StudentT, ``num_samples < 1``, ``x_val`` without
        ``y_val``; for regression, targets that are not one finite float per example, and
        ``x_val`` or ``x_ood``.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.evaluation import evaluate

        x, y = torch.rand(96, 4), torch.randint(3, (96,))
        (x_train, x_val, x_test), (y_train, y_val, y_test) = x.split(32), y.split(32)
        model = bayesian(torch.nn.Linear(4, 3), num_data=len(x_train))
        guide = AutoNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(5):
            svi.step(x_train, y_train)
        result = evaluate(model, guide, x_test, y_test, num_samples=16, x_val=x_val, y_val=y_val)
        print(result.metrics["nll_ts"])   # the test NLL after temperature scaling on x_val

    A regression model, ``bayesian(net, likelihood="normal")``. Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.evaluation import evaluate

        x = torch.randn(64, 4)
        y = x.sum(-1) + 0.1 * torch.randn(64)                  # real targets, shape (N,)
        model = bayesian(torch.nn.Linear(4, 1), num_data=32, likelihood="normal")
        guide = AutoNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 5e-2}), Trace_ELBO())
        for _ in range(20):
            svi.step(x[:32], y[:32])
        result = evaluate(model, guide, x[32:], y[32:], num_samples=16)
        assert {"rmse", "nll", "crps", "coverage_90"} <= set(result.metrics)
        assert result.loc.shape == (16, 32)    # each draw's Normal of each test point
    """
    _check_args(x, x_val, y_val, x_ood, num_samples, batch_size, num_bins, site)
    device = guide_device(guide, device)
    kind, num_draws = draw_kind(guide, num_samples)
    base_seed = int(torch.randint(0, 2**62, ()).item())

    def make_splits(likelihood: str) -> dict:
        if likelihood != "categorical":
            _check_regression(x, y, likelihood, site, x_val, x_ood)
            return {"test": _RegressionAccumulator(x, y, device, num_draws, likelihood)}
        _check_split("x", x, y)
        splits = {"test": _Accumulator(x, y, device, num_draws)}
        if x_val is not None:
            _check_split("x_val", x_val, y_val)
            splits["val"] = _Accumulator(x_val, y_val, device)
        if x_ood is not None:
            splits["ood"] = _Accumulator(x_ood, None, device)
        return splits

    with torch.no_grad():
        likelihood, splits = _run_draws(
            model, guide, x, make_splits, kind, num_draws, site, batch_size, device, base_seed
        )
    if likelihood != "categorical":
        return _regression_result(splits["test"], y, site, num_bins)
    probs = splits["test"].mean_probs()
    labels = y.detach().cpu().long()
    val = None
    if x_val is not None:
        val = (splits["val"].mean_probs(), y_val.detach().cpu().long())
    ood_probs = splits["ood"].mean_probs() if x_ood is not None else None
    test = splits["test"]
    return EvaluationResult(
        metrics=_all_metrics(probs, labels, num_bins, val=val, ood_probs=ood_probs),
        probs=probs,
        log_likelihood=test.log_lik,
        labels=labels,
        predictive_samples=test.samples,
        draw_accuracy=test.draw_accuracy,
        ood_probs=ood_probs,
        site=site,
        num_bins=num_bins,
    )


def _check_regression(x, y, likelihood: str, site: str, x_val, x_ood) -> None:
    """The arguments of :func:`evaluate` that a regression model takes (and those it does not)."""
    _check_targets(x, y, likelihood, site)
    if x_val is not None:
        raise ValueError(
            "x_val and y_val fit the temperature of a classifier; a regression model (site "
            f"{site!r} is {likelihood}) takes none: evaluate the validation split on its own"
        )
    if x_ood is not None:
        raise ValueError(
            "x_ood scores out-of-distribution detection by a classifier's confidence; a "
            f"regression model (site {site!r} is {likelihood}) takes none"
        )


def _regression_result(
    test: _RegressionAccumulator, y: torch.Tensor, site: str, num_bins: int
) -> EvaluationResult:
    """The :class:`EvaluationResult` of a regression model: metrics of the mixture of the draws."""
    targets = y.detach().to("cpu", torch.float64)
    return EvaluationResult(
        metrics=test.metrics(targets),
        probs=None,
        log_likelihood=test.log_likelihood(targets),
        labels=targets,
        predictive_samples=test.samples,
        draw_accuracy=None,
        site=site,
        num_bins=num_bins,
        likelihood=test.likelihood,
        loc=test.loc,
        scale=test.scale,
        df=test.df,
    )
