"""The result of a posterior-predictive evaluation, and its ArviZ export.

Usage::

    import torch
    from pyro.infer.autoguide import AutoDelta
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.evaluation import evaluate

    model = bayesian(torch.nn.Linear(4, 3), num_data=32)
    guide = AutoDelta(model)
    x, y = torch.rand(32, 4), torch.randint(3, (32,))
    guide(x, y)                                  # set the autoguide up (train it with SVI first)
    result = evaluate(model, guide, x, y)
    tree = result.to_datatree()                  # az.loo(tree), az.summary(tree)
    paths = result.plot_calibration("calibration.png")
    assert [p.name for p in paths] == ["calibration.png", "calibration_pava.png"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import regression
from .plots import plot_coverage, plot_pava, plot_pit, plot_reliability

__all__ = ["EvaluationResult"]


@dataclass
class EvaluationResult:
    """Summaries of a posterior-predictive evaluation (all tensors on the CPU).

    A classifier's (``likelihood == "categorical"``) and a regression model's (``"normal"`` or
    ``"studentt"``, :attr:`is_regression`) share the class; the fields that only one of them
    has are ``None`` for the other.

    :ivar metrics: a classifier's ``accuracy``, ``nll``, ``brier``, ``ece``, ``auroc``;
        ``auroc_ood`` when OOD inputs were given; ``temperature``, ``nll_ts``, ``brier_ts``,
        ``ece_ts`` when a validation split was given. Undefined values (e.g. AUROC with no error
        at all) are ``nan``. A regression model's: ``rmse``, ``mae``, ``nll``, ``crps``,
        ``coverage_50``, ``coverage_90``, ``coverage_95``, ``interval_width_90``,
        ``calibration_error`` (:func:`~.regression.regression_metrics`).
    :ivar probs: mean predictive probabilities, ``(n_test, C)``, float64 (``None`` for
        regression).
    :ivar log_likelihood: ``log p(y_i | x_i, theta_s)`` per draw and test point,
        ``(n_draws, n_test)``.
    :ivar labels: the test labels, ``(n_test,)`` (regression: the targets, float64).
    :ivar predictive_samples: one label (regression: one target) sampled from each draw's
        predictive, ``(n_draws, n_test)``.
    :ivar draw_accuracy: test accuracy of each draw on its own, ``(n_draws,)`` (``None`` for
        regression).
    :ivar ood_probs: mean predictive probabilities of the OOD inputs, or ``None``.
    :ivar site: name of the observed sample site.
    :ivar num_bins: number of confidence bins of the ECE and the reliability diagram.
    :ivar likelihood: the observed site's distribution: ``categorical``, ``normal`` or
        ``studentt``.
    :ivar loc: regression only: each draw's predictive location of each test point,
        ``(n_draws, n_test)``, float64 (the mixture predictive is their equal-weight mixture).
    :ivar scale: regression only: each draw's predictive scale, ``(n_draws, n_test)``.
    :ivar df: StudentT only: each draw's degrees of freedom, ``(n_draws, n_test)``.

    Usage::

        import torch
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.evaluation import evaluate

        model = bayesian(torch.nn.Linear(4, 3), num_data=32)
        guide = AutoNormal(model)
        x, y = torch.rand(32, 4), torch.randint(3, (32,))
        guide(x, y)                                  # set the autoguide up
        result = evaluate(model, guide, x, y, num_samples=8)
        assert result.probs.shape == (32, 3) and result.num_draws == 8
        assert result.log_likelihood.shape == (8, 32)   # per draw and test point
    """

    metrics: dict[str, float]
    probs: torch.Tensor | None
    log_likelihood: torch.Tensor
    labels: torch.Tensor
    predictive_samples: torch.Tensor
    draw_accuracy: torch.Tensor | None
    ood_probs: torch.Tensor | None = None
    site: str = "obs"
    num_bins: int = 15
    likelihood: str = "categorical"
    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    df: torch.Tensor | None = None

    @property
    def num_draws(self) -> int:
        """Number of posterior draws (ensemble members, samples, or 1 for a point estimate)."""
        return int(self.log_likelihood.shape[0])

    @property
    def is_regression(self) -> bool:
        """Whether the observed site is a Normal or StudentT (else a classifier's Categorical)."""
        return self.likelihood != "categorical"

    def _draw_quantities(self) -> dict[str, np.ndarray]:
        """Each draw's test metrics on its own: accuracy (regression: RMSE of its mean) and NLL."""
        draw_nll = -self.log_likelihood.double().mean(-1)
        if self.is_regression:
            rmse = (self.loc - self.labels.double()).square().mean(-1).sqrt()
            return {"rmse": rmse.numpy(), "nll": draw_nll.numpy()}
        return {"accuracy": self.draw_accuracy.double().numpy(), "nll": draw_nll.numpy()}

    def to_datatree(self, num_chains: int = 1):
        """The evaluation as an ArviZ ``xarray.DataTree``.

        Groups, with sample dims ``("chain", "draw")`` and the observation dim ``"obs_id"``:

        * ``posterior_predictive``: variable ``site``, a label sampled from each draw's predictive;
        * ``log_likelihood``: variable ``site``, the per-draw log-likelihood of each test point;
        * ``observed_data``: variable ``site``, the test labels;
        * ``posterior``: ``accuracy`` (regression: ``rmse``, of the draw's mean) and ``nll`` of
          each draw on the test set. They are functions of the parameters (derived quantities);
          the latent weights themselves are not stored. ``az.loo`` needs this group to exist,
          ``ess``/``rhat``/``summary`` read it.

        Regression: the posterior predictive holds one real target sampled from each draw's
        Normal or StudentT, and the observed data the targets.

        Draws of a guide are independent, so the default is one chain (``az.loo`` then uses a
        relative efficiency of exactly 1). R-hat compares chains and is ``nan`` with one chain;
        ``num_chains=k`` splits the draws into ``k`` chains of equal length if you want it anyway.
        ``az.loo`` needs about 25 draws or more (its Pareto tail fit needs 5 tail draws).

        Usage::

            import arviz as az
            import torch
            from pyro.infer.autoguide import AutoNormal
            from pyro_otmdr.bayes import bayesian
            from pyro_otmdr.evaluation import evaluate

            model = bayesian(torch.nn.Linear(4, 3), num_data=32)
            guide = AutoNormal(model)
            x, y = torch.rand(32, 4), torch.randint(3, (32,))
            guide(x, y)                                  # set the autoguide up
            result = evaluate(model, guide, x, y, num_samples=32)   # az.loo needs >= ~25
            tree = result.to_datatree()
            loo, summary = az.loo(tree), az.summary(tree)
            ess = az.ess(tree, group="posterior_predictive")
            assert list(summary.index) == ["accuracy", "nll"]      # the posterior group
        """
        import arviz as az

        if not isinstance(num_chains, int) or num_chains < 1 or self.num_draws % num_chains:
            raise ValueError(
                f"num_chains must be a positive int dividing the {self.num_draws} draws, "
                f"got {num_chains!r}"
            )
        shape = (num_chains, self.num_draws // num_chains)
        n = self.labels.shape[0]
        data = {
            "posterior": {
                name: value.reshape(shape) for name, value in self._draw_quantities().items()
            },
            "posterior_predictive": {self.site: self.predictive_samples.numpy().reshape(*shape, n)},
            "log_likelihood": {self.site: self.log_likelihood.double().numpy().reshape(*shape, n)},
            "observed_data": {self.site: self.labels.numpy()},
        }
        return az.from_dict(data, dims={self.site: ["obs_id"]}, coords={"obs_id": np.arange(n)})

    def plot_calibration(
        self, path: str | Path, *, pava_samples: int = 200, seed: int = 0, dpi: int = 80
    ) -> list[Path]:
        """Write a reliability diagram at ``path`` and ArviZ's PAV calibration plot beside it
        (regression: the coverage calibration curve and ArviZ's PIT plot).

        The reliability diagram shows the accuracy in each of ``num_bins`` equal-width confidence
        bins against the diagonal, with the ECE in its title. The second PNG,
        ``<stem>_pava.png``, is ``arviz_plots.plot_ppc_pava(..., data_type="categorical")``:
        one one-vs-others PAV-adjusted calibration curve per class. ArviZ estimates the predicted
        probability of a class as the fraction of posterior-predictive samples equal to it, so
        for this plot ``pava_samples`` labels per test point are drawn from the mean predictive
        (the same distribution as ``to_datatree()``'s one label per draw, with a resolution of
        ``1/pava_samples`` instead of ``1/n_draws``; a point estimate works too).

        Regression: ``path`` is the calibration curve, the observed coverage of the central
        predictive intervals against their nominal level (:func:`~.regression.calibration_curve`,
        with the calibration error in the title), and ``<stem>_pit.png`` is
        ``arviz_plots.plot_ppc_pit(..., coverage=True)`` of ``pava_samples`` targets per test
        point drawn from the mixture predictive.

        :returns: the two written paths.

        Usage::

            import torch
            from pyro.infer.autoguide import AutoDelta
            from pyro_otmdr.bayes import bayesian
            from pyro_otmdr.evaluation import evaluate

            model = bayesian(torch.nn.Linear(4, 3), num_data=32)
            guide = AutoDelta(model)
            x, y = torch.rand(32, 4), torch.randint(3, (32,))
            guide(x, y)                                  # set the autoguide up
            result = evaluate(model, guide, x, y)
            paths = result.plot_calibration("figures/calibration.png")
            assert [str(p) for p in paths] == ["figures/calibration.png",
                                               "figures/calibration_pava.png"]
        """
        if not isinstance(pava_samples, int) or pava_samples < 2:
            raise ValueError(f"pava_samples must be an int >= 2, got {pava_samples!r}")
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"path must end in .png, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.is_regression:
            pit_path = path.with_name(f"{path.stem}_pit.png")
            nominal, observed = regression.calibration_curve(
                self.labels, self.loc, self.scale, self.df
            )
            plot_coverage(nominal, observed, path, dpi)
            plot_pit(self, pit_path, pava_samples, seed, dpi)
            return [path, pit_path]
        pava_path = path.with_name(f"{path.stem}_pava.png")
        plot_reliability(self.probs, self.labels, self.num_bins, path, dpi)
        plot_pava(self, pava_path, pava_samples, seed, dpi)
        return [path, pava_path]
