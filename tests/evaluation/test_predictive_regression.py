"""evaluate() on regression models: the mixture predictive of the draws, its metrics, the ArviZ
export and LOO, the calibration plots, and the bad inputs a regression model gets."""

import warnings

import matplotlib

matplotlib.use("Agg")

import arviz as az
import matplotlib.image as mpimg
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr.bayes import bayesian
from pyro_otmdr.evaluation import evaluate, regression
from pyro_otmdr.evaluation.result import EvaluationResult

F64 = torch.float64


class LineEnsemble:
    """An ensemble guide of the lines ``y = w x``, one slope per member (known draws)."""

    def __init__(self, slopes):
        self.num_members = len(slopes)
        self.slopes = slopes

    def member_values(self, index, *args):
        return {"w": torch.tensor(self.slopes[index])}


def line(x, y=None):
    """``y ~ Normal(w x, 0.5)`` with a prior ``w ~ Normal(0, 1)``: the mixture is known."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(w * x[:, 0], 0.5), obs=y)


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(120, 3, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(120, generator=generator)
    return (x[:80], y[:80]), (x[80:], y[80:])


@pytest.fixture(scope="module")
def trained(data):
    (x, y), _ = data
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(0)
        model = bayesian(torch.nn.Linear(3, 1), num_data=len(x), likelihood="normal")
        guide = AutoNormal(model, init_scale=0.01)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(200):
            svi.step(x, y)
        state = pyro.get_param_store().get_state()
    return model, guide, state


@pytest.fixture
def fitted(trained):
    model, guide, state = trained
    pyro.get_param_store().set_state(state)
    return model, guide


@pytest.fixture(scope="module")
def result(trained, data):
    model, guide, state = trained
    pyro.get_param_store().set_state(state)
    pyro.set_rng_seed(1)
    return evaluate(model, guide, *data[1], num_samples=32)


def test_the_mixture_of_known_draws_gives_the_metrics_of_its_components(data):
    _, (x, y) = data
    slopes = [0.5, 1.0, 1.5]
    result = evaluate(line, LineEnsemble(slopes), x, y)
    loc = torch.stack([s * x[:, 0].double() for s in slopes])
    assert result.num_draws == 3 and result.likelihood == "normal" and result.is_regression
    torch.testing.assert_close(result.loc, loc, rtol=1e-6, atol=1e-6)
    assert bool((result.scale == 0.5).all()) and result.df is None
    expected = regression.regression_metrics(y.double(), loc, torch.full_like(loc, 0.5))
    assert result.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # each draw's log-likelihood, as a classifier's, for LOO
    expected_ll = dist.Normal(loc, 0.5).log_prob(y.double())
    torch.testing.assert_close(result.log_likelihood, expected_ll, rtol=1e-5, atol=1e-5)
    assert result.probs is None and result.draw_accuracy is None


def test_a_point_estimate_is_one_draw(fitted, data):
    model, _ = fitted
    _, (x, y) = data
    guide = AutoDelta(model)
    guide(x, y)
    result = evaluate(model, guide, x, y)
    assert result.num_draws == 1
    sigma = float(guide.median()["sigma"])
    assert torch.allclose(result.scale, torch.full_like(result.scale, sigma))
    expected = regression.regression_metrics(y, result.loc[0], result.scale[0])
    assert result.metrics == pytest.approx(expected)


def test_autonormal_metrics_are_sensible_and_consistent(result, data):
    _, (_, y) = data
    m = result.metrics
    assert m["rmse"] < 0.7 and m["mae"] <= m["rmse"]  # the noise is 0.5
    assert 0.5 < m["coverage_90"] <= 1 and m["coverage_50"] <= m["coverage_90"] <= m["coverage_95"]
    assert m == pytest.approx(regression.regression_metrics(y, result.loc, result.scale))
    assert result.loc.shape == result.scale.shape == result.predictive_samples.shape == (32, 40)
    assert result.labels.dtype == F64 and torch.equal(result.labels, y.double())


def test_chunks_and_seeds(trained, data):
    model, guide, state = trained
    pyro.get_param_store().set_state(state)
    _, (x, y) = data
    pyro.set_rng_seed(3)
    whole = evaluate(model, guide, x, y, num_samples=8)
    pyro.set_rng_seed(3)
    chunked = evaluate(model, guide, x, y, num_samples=8, batch_size=7)
    torch.testing.assert_close(chunked.loc, whole.loc)
    torch.testing.assert_close(chunked.predictive_samples, whole.predictive_samples)
    assert chunked.metrics == pytest.approx(whole.metrics)


def test_predictive_samples_follow_each_draws_normal(data):
    _, (x, _) = data
    big_x = x.repeat(50, 1)  # 2000 points: the standardised samples are N(0, 1)
    result = evaluate(line, LineEnsemble([1.0]), big_x, torch.zeros(len(big_x)))
    z = (result.predictive_samples - result.loc) / result.scale
    assert abs(float(z.mean())) < 5 / len(big_x) ** 0.5
    assert abs(float(z.std()) - 1) < 5 / (2 * len(big_x)) ** 0.5


def test_studentt_and_heteroscedastic_models(data):
    (x, y), (x_test, y_test) = data
    model = bayesian(torch.nn.Linear(3, 2), num_data=len(x), likelihood="studentt",
                     heteroscedastic=True, df=5.0)  # fmt: skip
    guide = AutoNormal(model)
    SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO()).step(x, y)
    result = evaluate(model, guide, x_test, y_test, num_samples=4)
    assert result.likelihood == "studentt" and bool((result.df == 5.0).all())
    assert result.scale.std() > 0  # one scale per example
    expected = regression.regression_metrics(y_test, result.loc, result.scale, result.df)
    assert result.metrics == pytest.approx(expected)


def test_datatree_and_loo_work_for_regression(result):
    tree = result.to_datatree()
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= set(
        tree.children
    )
    assert tree["observed_data"]["obs"].dtype == "float64"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k on a few points
        loo = az.loo(tree)
        summary = az.summary(tree)
    assert list(summary.index) == ["rmse", "nll"]
    # PSIS-LOO is a little below the in-sample log predictive density of the mixture
    in_sample = float(-regression.nll(result.labels, result.loc, result.scale)) * 40
    assert in_sample - 10 < float(loo.elpd) <= in_sample
    # each draw's RMSE in the posterior group
    draw_rmse = (result.loc - result.labels).square().mean(-1).sqrt()
    assert tree["posterior"]["rmse"].values.ravel() == pytest.approx(draw_rmse.numpy())


def test_plot_calibration_draws_the_coverage_curve_and_arviz_pit(result, tmp_path):
    paths = result.plot_calibration(tmp_path / "cal.png")
    assert [p.name for p in paths] == ["cal.png", "cal_pit.png"]
    for path in paths:
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.std() > 0.01  # a real picture, not a blank one


def test_an_evaluation_result_of_a_classifier_keeps_its_fields():
    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    guide = AutoDelta(model)
    x, y = torch.rand(8, 4), torch.randint(3, (8,))
    guide(x, y)
    result = evaluate(model, guide, x, y)
    assert isinstance(result, EvaluationResult) and not result.is_regression
    assert result.loc is None and result.probs.shape == (8, 3)


# ------------------------------------------------------------------ bad inputs


def _poisson(x, y=None):
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Poisson(x[:, 0].exp()), obs=y)


def _ensemble():
    return LineEnsemble([1.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda x, y: evaluate(_poisson, lambda x, y=None: {}, x, y, num_samples=1),
            "Categorical distribution .* or a Normal or StudentT",
        ),
        (lambda x, y: evaluate(line, _ensemble(), x, y[:, None]), r"shape \(40,\).*reshape"),
        (lambda x, y: evaluate(line, _ensemble(), x, y[:-1]), r"shape \(40,\)"),
        (lambda x, y: evaluate(line, _ensemble(), x, torch.where(y > 1, torch.nan, y)), "NaN"),
        (lambda x, y: evaluate(line, _ensemble(), x, y.long()), "floating point.*Categorical"),
        (lambda x, y: evaluate(line, _ensemble(), x, y, x_val=x, y_val=y), "temperature"),
        (lambda x, y: evaluate(line, _ensemble(), x, y, x_ood=x), "out-of-distribution"),
        (lambda x, y: evaluate(line, _ensemble(), x, list(y)), "must be a tensor"),
    ],
    ids=["poisson", "column", "length", "nan", "integers", "x_val", "x_ood", "list"],
)
def test_bad_regression_inputs_raise(call, message, data):
    _, (x, y) = data
    with pytest.raises(ValueError, match=message):
        call(x, y)
