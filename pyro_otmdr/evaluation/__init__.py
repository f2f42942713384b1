"""Evaluation of Pyro classifiers: metrics, the posterior predictive, robustness, ArviZ, plots.

* :mod:`.metrics`: accuracy, NLL, Brier, ECE, AUROC, temperature scaling (plain tensors);
* :mod:`.predictive`: :func:`evaluate`, the posterior predictive over a test set, in chunks;
* :mod:`.result`: :class:`EvaluationResult` and its ArviZ ``DataTree``;
* :mod:`.robustness`: :func:`robustness`, clean and robust accuracy per threat and budget;
* :mod:`.plots`: the reliability diagram and ArviZ's PAV calibration plot.

Usage::

    from pyro_otmdr.evaluation import evaluate, robustness

    result = evaluate(model, guide, x_test, y_test, num_samples=32)
    report = robustness(model, guide, x_test, y_test, budgets=(0.02, 0.05, 0.1))
"""

from .predictive import evaluate
from .result import EvaluationResult
from .robustness import RobustnessReport, robustness

__all__ = ["EvaluationResult", "RobustnessReport", "evaluate", "robustness"]
