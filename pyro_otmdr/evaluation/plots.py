"""Calibration figures: a reliability diagram and ArviZ's categorical PAV plot (PNG, Agg); for
regression, the coverage calibration curve and ArviZ's PIT plot.

Usage::

    from pathlib import Path
    import torch
    from pyro_otmdr.evaluation.plots import plot_reliability

    probs = torch.softmax(torch.randn(100, 3), -1)
    labels = torch.randint(3, (100,))
    plot_reliability(probs, labels, num_bins=15, path=Path("reliability.png"), dpi=80)
    assert Path("reliability.png").stat().st_size > 0
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import metrics, regression

if TYPE_CHECKING:
    from .result import EvaluationResult

__all__ = [
    "coverage_figure",
    "plot_coverage",
    "plot_pava",
    "plot_pit",
    "plot_reliability",
    "reliability_figure",
]


def reliability_figure(probs: torch.Tensor, labels: torch.Tensor, num_bins: int):
    """A reliability diagram over a histogram of how many points fall in each confidence bin.

    Top: the accuracy in each of ``num_bins`` equal-width bins of the top-class probability, the
    gap to the confidence hatched, the diagonal, and the ECE in the title. Bottom: the number of
    points in each bin, so a wide gap over a nearly empty bin reads as what it is.

    Usage::

        import torch
        from pyro_otmdr.evaluation.plots import reliability_figure

        probs = torch.softmax(torch.randn(100, 3), -1)
        labels = torch.randint(3, (100,))
        fig = reliability_figure(probs, labels, num_bins=15)   # result.probs, result.labels
        fig.savefig("reliability.png")
        assert len(fig.axes) == 2       # the diagram over the histogram of counts
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs64 = probs.double()
    acc, conf, count = metrics.calibration_bins(probs64, labels, num_bins)
    ece = float(metrics.ece(probs64, labels, num_bins))
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    width = 1.0 / num_bins
    filled = count.numpy() > 0
    fig = Figure(figsize=(4.5, 6.0))
    FigureCanvasAgg(fig)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    left = edges[:-1][filled]
    acc_np, conf_np = acc.numpy()[filled], conf.numpy()[filled]
    ax.bar(left, acc_np, width, align="edge", color="C0", edgecolor="black", label="accuracy")
    gap = np.abs(acc_np - conf_np)
    bottom = np.minimum(acc_np, conf_np)
    hatch = {"fill": False, "hatch": "//", "edgecolor": "C3", "label": "gap to confidence"}
    ax.bar(left, gap, width, bottom=bottom, align="edge", **hatch)
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(f"Reliability diagram, ECE = {ece:.4f} ({num_bins} bins)")
    ax.legend(loc="upper left", fontsize="small")
    hist.bar(edges[:-1], count.numpy(), width, align="edge", color="0.6", edgecolor="black")
    hist.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="points")
    fig.tight_layout()
    return fig


def plot_reliability(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int, path: Path, dpi: int
) -> None:
    """Save :func:`reliability_figure` as a PNG at ``path``."""
    reliability_figure(probs, labels, num_bins).savefig(path, dpi=dpi)


def plot_pava(result: EvaluationResult, path: Path, samples: int, seed: int, dpi: int) -> None:
    """ArviZ's categorical PAV calibration plot of the mean predictive, saved as a PNG."""
    import arviz as az
    import matplotlib.pyplot as plt
    from arviz_plots import plot_ppc_pava

    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(result.probs.double(), samples, replacement=True, generator=generator)
    n, num_classes = result.probs.shape
    tree = az.from_dict(
        {
            "posterior_predictive": {result.site: draws.T.numpy()[None]},
            "observed_data": {result.site: result.labels.numpy()},
        },
        dims={result.site: ["obs_id"]},
        coords={"obs_id": np.arange(n)},
    )
    cols = min(num_classes, 5)
    rows = math.ceil(num_classes / cols)
    figure_kwargs = {"figsize": (2.6 * cols, 2.3 * rows), "layout": "constrained"}
    collection = plot_ppc_pava(
        tree,
        data_type="categorical",
        backend="matplotlib",
        col_wrap=cols,
        figure_kwargs=figure_kwargs,
    )
    try:
        collection.savefig(path, dpi=dpi)
    finally:
        plt.close(collection.get_viz("figure"))


def coverage_figure(nominal: torch.Tensor, observed: torch.Tensor):
    """A regression calibration curve: observed against nominal coverage of central intervals.

    The curve of :func:`~pyro_otmdr.evaluation.regression.calibration_curve` over the diagonal
    (perfect calibration), the area between them shaded and the calibration error (its mean
    absolute gap) in the title. Below the diagonal the intervals are too narrow
    (over-confident), above it too wide.

    Usage::

        import torch
        from pyro_otmdr.evaluation.plots import coverage_figure
        from pyro_otmdr.evaluation.regression import calibration_curve

        y = torch.randn(200)
        nominal, observed = calibration_curve(y, torch.zeros(200), 0.5 * torch.ones(200))
        fig = coverage_figure(nominal, observed)    # result.plot_calibration draws this one
        fig.savefig("coverage.png")
        assert len(fig.axes) == 1
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nominal_np = nominal.double().numpy()
    observed_np = observed.double().numpy()
    error = float(np.abs(observed_np - nominal_np).mean())
    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.fill_between(nominal_np, nominal_np, observed_np, color="C3", alpha=0.25, label="gap")
    ax.plot(nominal_np, observed_np, color="C0", label="observed")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage of the central interval")
    ax.set(ylabel="observed coverage (fraction of targets inside)")
    ax.set_title(f"Regression calibration, error = {error:.4f}")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_coverage(nominal: torch.Tensor, observed: torch.Tensor, path: Path, dpi: int) -> None:
    """Save :func:`coverage_figure` as a PNG at ``path``."""
    coverage_figure(nominal, observed).savefig(path, dpi=dpi)


def plot_pit(result: EvaluationResult, path: Path, samples: int, seed: int, dpi: int) -> None:
    """ArviZ's PIT coverage plot of a regression result's mixture predictive, saved as a PNG.

    ``samples`` targets per test point are drawn from the mixture (a uniformly chosen draw, then
    that draw's Normal or StudentT by its inverse CDF) with a generator seeded by ``seed``.
    """
    import arviz as az
    import matplotlib.pyplot as plt
    from arviz_plots import plot_ppc_pit

    generator = torch.Generator().manual_seed(seed)
    draws, n = result.loc.shape
    component = torch.randint(draws, (samples, n), generator=generator)
    uniform = torch.rand(samples, n, generator=generator, dtype=torch.float64)
    loc, scale = result.loc.gather(0, component), result.scale.gather(0, component)
    df = None if result.df is None else result.df.gather(0, component)
    values = regression.component_quantile(uniform.clamp(1e-12, 1 - 1e-12), loc, scale, df)
    tree = az.from_dict(
        {
            "posterior_predictive": {result.site: values.numpy()[None]},
            "observed_data": {result.site: result.labels.double().numpy()},
        },
        dims={result.site: ["obs_id"]},
        coords={"obs_id": np.arange(n)},
    )
    collection = plot_ppc_pit(
        tree, coverage=True, backend="matplotlib", figure_kwargs={"figsize": (4.5, 3.5)}
    )
    try:
        collection.savefig(path, dpi=dpi)
    finally:
        plt.close(collection.get_viz("figure"))
