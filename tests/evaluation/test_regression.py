"""pyro_otmdr.evaluation.regression: hand-derived metrics of a point estimate, a mixture of draws
against Monte-Carlo references (tolerances from the sample size), and bad inputs."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from pyro_otmdr.evaluation import regression as R

F64 = torch.float64
SQRT_PI = math.sqrt(math.pi)


def _phi(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# ------------------------------------------------------------------ a point estimate


# standardised residuals z_i = (y_i - mu) / sigma, away from every interval's edge
Z = (0.0, 0.5, -1.0, 1.5, -1.7, 2.0, 3.0)
MU, SIGMA = 1.0, 2.0


@pytest.fixture
def point():
    y = torch.tensor([MU + SIGMA * z for z in Z], dtype=F64)
    return y, torch.full_like(y, MU), torch.full_like(y, SIGMA)


def test_point_estimate_rmse_mae_nll_crps_by_hand(point):
    y, loc, scale = point
    n = len(Z)
    assert float(R.rmse(y, loc)) == pytest.approx(SIGMA * math.sqrt(sum(z * z for z in Z) / n))
    assert float(R.mae(y, loc)) == pytest.approx(SIGMA * sum(abs(z) for z in Z) / n)
    # NLL of N(mu, sigma^2): log(sigma) + log(2 pi) / 2 + z^2 / 2
    nll = sum(math.log(SIGMA) + 0.5 * math.log(2 * math.pi) + 0.5 * z * z for z in Z) / n
    assert float(R.nll(y, loc, scale)) == pytest.approx(nll, rel=1e-14)
    # closed-form Gaussian CRPS: sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))
    crps = sum(SIGMA * (z * (2 * _Phi(z) - 1) + 2 * _phi(z) - 1 / SQRT_PI) for z in Z) / n
    assert float(R.crps(y, loc, scale)) == pytest.approx(crps, rel=1e-13)
    # (S, n) with S = 1 is the same point estimate
    assert float(R.crps(y, loc[None], scale[None])) == float(R.crps(y, loc, scale))


def test_point_estimate_coverage_is_exact_and_the_interval_is_the_normal_ones(point):
    y, loc, scale = point
    # |z| <= 0.674: {0, 0.5}; <= 1.645: {.., -1, 1.5}; <= 1.960: {.., -1.7}
    assert float(R.coverage(y, loc, scale, 0.5)) == 2 / 7
    assert float(R.coverage(y, loc, scale, 0.9)) == 4 / 7
    assert R.coverage(y, loc, scale, [0.5, 0.9, 0.95]).tolist() == [2 / 7, 4 / 7, 5 / 7]
    z90 = stats.norm.ppf(0.95)
    assert float(R.interval_width(loc, scale, 0.9)) == pytest.approx(2 * z90 * SIGMA, rel=1e-12)
    metrics = R.regression_metrics(y, loc, scale)
    assert (metrics["coverage_50"], metrics["coverage_90"], metrics["coverage_95"]) == (
        2 / 7,
        4 / 7,
        5 / 7,
    )
    # the calibration error by hand: the central level of each target is erf(|z| / sqrt 2)
    central = [math.erf(abs(z) / math.sqrt(2)) for z in Z]
    grid = [(k + 0.5) / 100 for k in range(100)]
    area = sum(abs(sum(c <= a for c in central) / 7 - a) for a in grid) / 100
    assert metrics["calibration_error"] == pytest.approx(area, abs=1e-15)


def test_a_calibrated_predictive_has_a_small_calibration_error():
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    loc = torch.randn(n, generator=generator, dtype=F64)
    scale = 0.5 + torch.rand(n, generator=generator, dtype=F64)
    y = loc + scale * torch.randn(n, generator=generator, dtype=F64)
    nominal, observed = R.calibration_curve(y, loc, scale, num_levels=20)
    # each observed coverage is a binomial fraction: 5 standard errors at its level
    bound = 5 * torch.sqrt(nominal * (1 - nominal) / n)
    assert bool(((observed - nominal).abs() <= bound).all())
    assert float(R.calibration_error(y, loc, scale)) < 5 * math.sqrt(0.25 / n)
    assert float(R.calibration_error(y, loc, scale / 3)) > 0.2  # far too narrow


# ------------------------------------------------------------------ a mixture of draws


@pytest.fixture(scope="module")
def mixture():
    """Eight draws (components) for each of 40 examples, and targets from a wider law."""
    generator = torch.Generator().manual_seed(1)
    draws, n = 8, 40
    centre = torch.randn(n, generator=generator, dtype=F64)
    loc = centre + 0.7 * torch.randn(draws, n, generator=generator, dtype=F64)
    scale = 0.3 + torch.rand(draws, n, generator=generator, dtype=F64)
    y = centre + 1.5 * torch.randn(n, generator=generator, dtype=F64)
    return y, loc, scale


def _mixture_samples(loc, scale, m, seed, df=None):
    """``m`` iid samples of each example's equal-weight mixture, ``(m, n)``."""
    rng = np.random.default_rng(seed)
    draws, n = loc.shape
    pick = rng.integers(0, draws, size=(m, n))
    cols = np.arange(n)
    noise = rng.standard_normal((m, n)) if df is None else rng.standard_t(df, (m, n))
    return loc.numpy()[pick, cols] + scale.numpy()[pick, cols] * noise


def test_mixture_nll_and_cdf_match_scipy(mixture):
    y, loc, scale = mixture
    log_p = stats.norm.logpdf(y.numpy(), loc.numpy(), scale.numpy())
    expected = -(logsumexp(log_p, axis=0) - math.log(loc.shape[0])).mean()
    assert float(R.nll(y, loc, scale)) == pytest.approx(expected, rel=1e-13)
    cdf = stats.norm.cdf(y.numpy(), loc.numpy(), scale.numpy()).mean(0)
    np.testing.assert_allclose(R.pit(y, loc, scale).numpy(), cdf, rtol=1e-13, atol=1e-15)


def test_mixture_crps_matches_a_monte_carlo_reference(mixture):
    y, loc, scale = mixture
    m = 200_000
    x = _mixture_samples(loc, scale, m, seed=2)
    x2 = _mixture_samples(loc, scale, m, seed=3)
    # CRPS = E|X - y| - E|X - X'| / 2: one term per independent pair (X_m, X'_m)
    terms = np.abs(x - y.numpy()) - 0.5 * np.abs(x - x2)  # (m, n)
    reference = terms.mean()
    stderr = terms.mean(1).std(ddof=1) / math.sqrt(m)  # of the mean over examples
    assert float(R.crps(y, loc, scale)) == pytest.approx(reference, abs=5 * stderr)
    assert 5 * stderr < 2e-3  # the reference is sharp enough to catch a wrong formula


def test_mixture_quantiles_and_widths_match_monte_carlo(mixture):
    _, loc, scale = mixture
    m = 200_000
    x = _mixture_samples(loc, scale, m, seed=4)
    levels = torch.tensor([0.05, 0.25, 0.5, 0.95], dtype=F64)
    q = R.mixture_quantile(levels, loc, scale)  # (4, n)
    # the bisection's own accuracy: the mixture CDF at q is p
    np.testing.assert_allclose(
        R.mixture_cdf(q, loc, scale), levels[:, None].expand_as(q), atol=1e-11
    )
    # an empirical quantile's standard error: sqrt(p (1 - p) / m) / f(q)
    density = stats.norm.pdf(q.numpy()[:, None], loc.numpy(), scale.numpy()).mean(1)
    stderr = np.sqrt(levels.numpy() * (1 - levels.numpy()) / m)[:, None] / density
    empirical = np.quantile(x, levels.numpy(), axis=0)
    assert (np.abs(empirical - q.numpy()) <= 5 * stderr).all()
    width = float(R.interval_width(loc, scale, 0.9))
    mc_width = (np.quantile(x, 0.95, axis=0) - np.quantile(x, 0.05, axis=0)).mean()
    assert width == pytest.approx(mc_width, abs=5 * 2 * stderr.max() / math.sqrt(loc.shape[1]))


def test_mixture_coverage_is_exact_at_constructed_targets(mixture):
    _, loc, scale = mixture
    n = loc.shape[1]
    # target i at the mixture quantile p_i: inside the central interval of level a iff
    # |2 p_i - 1| <= a, so the coverage is known exactly (no p_i is near 0.5 +- a / 2)
    p = torch.linspace(0.01, 0.99, n, dtype=F64)
    p = p[((2 * p - 1).abs() - 0.5).abs() > 0.02]
    p = p[((2 * p - 1).abs() - 0.9).abs() > 0.02][:n]
    keep = len(p)
    y = R.mixture_quantile(p, loc[:, :keep], scale[:, :keep]).diagonal()
    for level in (0.5, 0.9):
        expected = float(((2 * p - 1).abs() <= level).double().mean())
        assert float(R.coverage(y, loc[:, :keep], scale[:, :keep], level)) == expected


def test_pit_matches_monte_carlo(mixture):
    y, loc, scale = mixture
    m = 200_000
    x = _mixture_samples(loc, scale, m, seed=5)
    empirical = (x <= y.numpy()).mean(0)
    u = R.pit(y, loc, scale).numpy()
    stderr = np.sqrt(np.clip(u * (1 - u), 1e-12, None) / m)
    assert (np.abs(empirical - u) <= 5 * stderr + 1 / m).all()


# ------------------------------------------------------------------ StudentT components


def test_studentt_point_estimate_against_scipy_and_the_closed_form_crps():
    df, mu, sigma = 5.0, 0.5, 1.5
    y = torch.tensor([-2.0, 0.0, 0.5, 1.0, 4.0], dtype=F64)
    loc, scale = torch.full_like(y, mu), torch.full_like(y, sigma)
    expected_nll = -stats.t.logpdf(y.numpy(), df, mu, sigma).mean()
    assert float(R.nll(y, loc, scale, df)) == pytest.approx(expected_nll, rel=1e-12)
    np.testing.assert_allclose(R.pit(y, loc, scale, df), stats.t.cdf(y, df, mu, sigma), rtol=1e-12)
    q = R.mixture_quantile([0.05, 0.95], loc, scale, df)[:, 0]
    np.testing.assert_allclose(q, stats.t.ppf([0.05, 0.95], df, mu, sigma), rtol=1e-12)
    # the CRPS of a location-scale t (Jordan, Krueger, Lerch 2019, scoringRules' crps_t)
    z = (y.numpy() - mu) / sigma
    beta = math.gamma(0.5) * math.gamma(df - 0.5) / math.gamma(df)
    beta_half = math.gamma(0.5) * math.gamma(df / 2) / math.gamma(df / 2 + 0.5)
    exact = sigma * (
        z * (2 * stats.t.cdf(z, df) - 1)
        + 2 * stats.t.pdf(z, df) * (df + z**2) / (df - 1)
        - 2 * math.sqrt(df) * beta / ((df - 1) * beta_half**2)
    )
    # the fair estimate from M samples per example: many copies of each example, so that the
    # mean's standard error (from the samples' spread) is small
    copies = 400
    m = 1000
    big_y = y.repeat(copies)
    estimate = float(R.crps(big_y, loc.repeat(copies), scale.repeat(copies), df, num_samples=m))
    # sd(|X - y|) <= sd(X) = sigma sqrt(df / (df - 2)) ~ 1.29 sigma, and the spread term of the
    # fair estimator adds at most as much again: the mean over n examples of M samples each has
    # a standard error below 3 sigma / sqrt(M n)
    stderr = 3 * sigma / math.sqrt(m * len(big_y))
    assert estimate == pytest.approx(exact.mean(), abs=5 * stderr)


def test_studentt_mixture_metrics_are_finite_and_ordered():
    generator = torch.Generator().manual_seed(2)
    loc = torch.randn(4, 30, generator=generator, dtype=F64)
    scale = 0.5 + torch.rand(4, 30, generator=generator, dtype=F64)
    y = torch.randn(30, generator=generator, dtype=F64)
    metrics = R.regression_metrics(y, loc, scale, df=torch.full((4, 30), 3.0))
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["coverage_50"] <= metrics["coverage_90"] <= metrics["coverage_95"]
    normal = R.regression_metrics(y, loc, scale)
    assert metrics["interval_width_90"] > normal["interval_width_90"]  # heavier tails


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("y", "loc", "scale", "message"),
    [
        (torch.zeros(3, 1), torch.zeros(3), torch.ones(3), r"shape \(n,\)"),
        (torch.tensor([0.0, math.nan, 1.0]), torch.zeros(3), torch.ones(3), "NaN"),
        (torch.zeros(3), torch.zeros(4), torch.ones(4), "one target per example"),
        (torch.zeros(3), torch.zeros(3), torch.ones(2), "same shape"),
        (torch.zeros(3), torch.zeros(3), torch.zeros(3), "positive"),
        (torch.zeros(3), torch.zeros(2, 3, 1), torch.ones(2, 3, 1), r"\(draws, n\)"),
        (torch.zeros(0), torch.zeros(0), torch.ones(0), "non-empty"),
    ],
)
def test_bad_inputs_are_refused(y, loc, scale, message):
    with pytest.raises(ValueError, match=message):
        R.regression_metrics(y, loc, scale)


def test_bad_levels_and_df_are_refused():
    y, loc, scale = torch.zeros(3), torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        R.coverage(y, loc, scale, 1.0)
    with pytest.raises(ValueError, match="df must be positive"):
        R.nll(y, loc, scale, df=-1.0)
    with pytest.raises(ValueError, match="num_levels"):
        R.calibration_error(y, loc, scale, num_levels=0)
