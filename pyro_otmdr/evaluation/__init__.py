"""Evaluation of Pyro classifiers and regression models: metrics, the posterior predictive,
robustness, ArviZ, plots.

* :mod:`.metrics`: accuracy, NLL, Brier, ECE, AUROC, temperature scaling (plain tensors);
* :mod:`.regression`: RMSE, NLL, CRPS, interval coverage and calibration of a regression
  model's mixture predictive (plain tensors);
* :mod:`.predictive`: :func:`evaluate`, the posterior predictive over a test set, in chunks;
* :mod:`.result`: :class:`EvaluationResult` and its ArviZ ``DataTree``;
* :mod:`.robustness`: :func:`robustness`, clean and robust accuracy per threat and budget;
* :mod:`.threats`: the threats, registered once (imports no torch);
* :mod:`.plots`: the reliability diagram and ArviZ's PAV calibration plot; the regression
  calibration curve and ArviZ's PIT plot.

Usage::

    import torch
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.evaluation import evaluate, robustness

    model = bayesian(torch.nn.Linear(4, 3), num_data=32)
    guide = AutoNormal(model)
    x_test, y_test = torch.rand(32, 4), torch.randint(3, (32,))
    guide(x_test, y_test)                # set the autoguide up (train it with SVI first)
    result = evaluate(model, guide, x_test, y_test, num_samples=4)
    report = robustness(model, guide, x_test, y_test, budgets=(0.05,), num_samples=4, steps=3)
    assert set(result.metrics) >= {"accuracy", "nll", "brier", "ece", "auroc"}
    assert report.robust_accuracy["w2-linf"][-1] <= report.clean_accuracy
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

#: Each public name and its module, loaded on first use: ``pyro_otmdr.evaluation.threats``
#: imports no torch.
_HOMES = {
    "EvaluationResult": "result",
    "RobustnessReport": "robustness",
    "evaluate": "predictive",
    "robustness": "robustness",
}

__all__ = ["EvaluationResult", "RobustnessReport", "evaluate", "robustness"]

__getattr__, __dir__ = lazy_names(__name__, _HOMES, __all__)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .predictive import evaluate
    from .result import EvaluationResult
    from .robustness import RobustnessReport, robustness
