"""Evaluation of Pyro classifiers: metrics, the posterior predictive, robustness, ArviZ, plots.

* :mod:`.metrics`: accuracy, NLL, Brier, ECE, AUROC, temperature scaling (plain tensors);
* :mod:`.predictive`: :func:`evaluate`, the posterior predictive over a test set, in chunks;
* :mod:`.result`: :class:`EvaluationResult` and its ArviZ ``DataTree``;
* :mod:`.robustness`: :func:`robustness`, clean and robust accuracy per threat and budget;
* :mod:`.plots`: the reliability diagram and ArviZ's PAV calibration plot.

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

from .predictive import evaluate
from .result import EvaluationResult
from .robustness import RobustnessReport, robustness

__all__ = ["EvaluationResult", "RobustnessReport", "evaluate", "robustness"]
