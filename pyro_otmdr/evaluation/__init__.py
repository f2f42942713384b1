"""Evaluation of Pyro classifiers: metrics, the posterior predictive, ArviZ export, plots.

* :mod:`.metrics`: accuracy, NLL, Brier, ECE, AUROC, temperature scaling (plain tensors);
* :mod:`.predictive`: :func:`evaluate`, the posterior predictive over a test set, in chunks;
* :mod:`.result`: :class:`EvaluationResult` and its ArviZ ``DataTree``;
* :mod:`.plots`: the reliability diagram and ArviZ's PAV calibration plot.

Usage::

    from pyro_otmdr.evaluation import evaluate

    result = evaluate(model, guide, x_test, y_test, num_samples=32)
"""

from .predictive import evaluate
from .result import EvaluationResult

__all__ = ["EvaluationResult", "evaluate"]
