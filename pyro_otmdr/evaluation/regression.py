"""Regression metrics of a mixture predictive, as small pure functions on tensors.

A regression model's posterior predictive over ``S`` draws is the equal-weight mixture
``p(y | x) = (1/S) sum_s D(y; loc_s, scale_s)``, where each draw ``s`` gives one Normal, or one
StudentT with ``df_s`` degrees of freedom, per example. Every function here takes

* ``y``: the targets, shape ``(n,)``;
* ``loc`` and ``scale``: shape ``(S, n)``, one row per draw, or ``(n,)`` for a single
  distribution per example (a point estimate: ``S = 1``);
* ``df``: ``None`` for Normal components, else the StudentT degrees of freedom (a number or a
  tensor broadcastable to ``loc``);

computes in float64 on the CPU and returns float64 tensors. Nothing here knows about Pyro:
:func:`pyro_otmdr.evaluation.evaluate` collects every draw's ``loc``/``scale`` and calls
:func:`regression_metrics`.

Definitions (the mixture CDF is ``F``, its quantile function ``q``):

* ``rmse``, ``mae``: of the predictive mean ``mean_s loc_s`` (:func:`predictive_mean`), the point
  prediction;
* ``nll``: ``-mean_i log p(y_i | x_i)``, the mixture density by ``logsumexp``;
* ``crps``: the continuous ranked probability score ``E|X - y| - E|X - X'| / 2``; exact for
  Normal components (the mixture-of-Gaussians formula), a fair (unbiased) sample estimate for
  StudentT components;
* ``coverage_a``: the fraction of targets in the central interval ``[q((1-a)/2), q((1+a)/2)]``;
* ``interval_width_a``: the mean width of that interval (quantiles by bisection on ``F``);
* ``calibration_error``: the area between the observed and the nominal coverage of the central
  intervals, ``mean_k |coverage(a_k) - a_k|`` over the midpoints ``a_k = (k - 1/2) / K``.

Usage::

    import torch
    from pyro_otmdr.evaluation import regression

    y = torch.tensor([0.0, 1.0, -1.0])
    loc = torch.zeros(3)                         # one Normal(0, 1) per target
    scale = torch.ones(3)
    metrics = regression.regression_metrics(y, loc, scale)
    assert abs(metrics["rmse"] - (2 / 3) ** 0.5) < 1e-12
    assert metrics["coverage_50"] == 1 / 3       # only y = 0 lies in [-0.674, 0.674]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_LEVELS",
    "calibration_curve",
    "calibration_error",
    "component_log_prob",
    "component_quantile",
    "coverage",
    "crps",
    "interval_width",
    "mae",
    "mixture_cdf",
    "mixture_log_prob",
    "mixture_quantile",
    "nll",
    "pit",
    "predictive_mean",
    "regression_metrics",
    "rmse",
]

#: The central-interval levels of ``coverage_<level>`` in :func:`regression_metrics`.
DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)

_F64 = torch.float64
#: Elements of the pairwise (S, S, chunk) tensor of the exact CRPS, per chunk of examples.
_PAIR_CHUNK = 2**22


def _as_draws(value: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.dim() == 1:
        value = value.unsqueeze(0)
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (n,) or (draws, n), got {tuple(value.shape)}")
    return value.detach().to("cpu", _F64)


def _check_targets(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] == 0:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"targets y must be a non-empty 1-D tensor of shape (n,), got {shape}")
    if y.dtype == torch.bool or y.dtype.is_complex:
        raise ValueError(f"targets y must be real numbers, got dtype {y.dtype}")
    y = y.detach().to("cpu", _F64)
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"targets y must be finite: {int(bad.sum())} of {len(y)} are NaN or infinite "
            f"(the first at index {first})"
        )
    return y


def _check_components(
    loc: torch.Tensor, scale: torch.Tensor, df: float | torch.Tensor | None, n: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    loc, scale = _as_draws(loc, "loc"), _as_draws(scale, "scale")
    if loc.shape != scale.shape:
        raise ValueError(
            f"loc and scale must have the same shape, got {tuple(loc.shape)} and "
            f"{tuple(scale.shape)}"
        )
    if n is not None and loc.shape[1] != n:
        raise ValueError(
            f"loc has {loc.shape[1]} examples per draw but there are {n} targets; pass one "
            "target per example"
        )
    if not bool(torch.isfinite(loc).all()):
        raise ValueError("loc must be finite (the model predicted NaN or infinity)")
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("scale must be positive and finite")
    if df is not None:
        df = torch.as_tensor(df, dtype=_F64).detach().cpu()
        try:
            df = torch.broadcast_to(df, loc.shape)
        except RuntimeError:
            raise ValueError(
                f"df must broadcast to loc's shape {tuple(loc.shape)}, got {tuple(df.shape)}"
            ) from None
        if not bool((df > 0).all()) or not bool(torch.isfinite(df).all()):
            raise ValueError("df must be positive and finite")
    return loc, scale, df


def _checked(y, loc, scale, df):
    y = _check_targets(y)
    return (y, *_check_components(loc, scale, df, len(y)))


def _component_cdf(value: torch.Tensor, loc, scale, df) -> torch.Tensor:
    z = (value - loc) / scale
    if df is None:
        return torch.special.ndtr(z)
    from scipy.special import stdtr

    return torch.from_numpy(np.asarray(stdtr(df.numpy(), z.numpy()), dtype=np.float64))


def _standard_quantile(p: torch.Tensor, df: torch.Tensor | None) -> torch.Tensor:
    """The quantile ``p`` of the standard Normal, or of the standard StudentT with ``df``."""
    if df is None:
        return torch.special.ndtri(p)
    from scipy.special import stdtrit

    p, df = torch.broadcast_tensors(p, df)
    return torch.from_numpy(np.asarray(stdtrit(df.numpy(), p.numpy()), dtype=np.float64))


def component_log_prob(
    y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: float | torch.Tensor | None = None
) -> torch.Tensor:
    """``log D(y_i; loc_si, scale_si)`` of every draw ``s`` and example ``i``, shape ``(S, n)``.

    Usage::

        import math
        import torch
        from pyro_otmdr.evaluation.regression import component_log_prob

        value = component_log_prob(torch.zeros(1), torch.zeros(2, 1), torch.ones(2, 1))
        assert value.shape == (2, 1)
        assert abs(float(value[0, 0]) + 0.5 * math.log(2 * math.pi)) < 1e-12
    """
    y, loc, scale, df = _checked(y, loc, scale, df)
    if df is None:
        z = (y - loc) / scale
        return -0.5 * z.square() - scale.log() - 0.5 * math.log(2 * math.pi)
    return torch.distributions.StudentT(df, loc, scale).log_prob(y.expand_as(loc))


def component_quantile(
    p: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Elementwise quantiles ``loc + scale * z(p)`` of the components (inverse-CDF sampling
    with uniform ``p``), ``p``, ``loc``, ``scale`` and ``df`` of one broadcast shape.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import component_quantile

        q = component_quantile(torch.tensor([0.5, 0.975]), torch.ones(2), 2 * torch.ones(2))
        assert q[0] == 1.0 and abs(float(q[1]) - (1 + 2 * 1.959964)) < 1e-5
    """
    flat = isinstance(loc, torch.Tensor) and loc.dim() == 1
    loc, scale, df = _check_components(loc, scale, df, None)
    probs = torch.as_tensor(p, dtype=_F64).detach().cpu()
    if not bool(((probs > 0) & (probs < 1)).all()):
        raise ValueError("quantile probabilities must lie in (0, 1)")
    probs = torch.broadcast_to(probs.reshape(-1) if flat else probs, loc.shape)
    value = loc + scale * _standard_quantile(probs, df)
    return value[0] if flat else value


def mixture_log_prob(
    y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: float | torch.Tensor | None = None
) -> torch.Tensor:
    """The log density of the equal-weight mixture at each target, ``(n,)``:
    ``logsumexp_s log D(y_i; loc_si, scale_si) - log S``.

    Usage::

        import math
        import torch
        from pyro_otmdr.evaluation.regression import mixture_log_prob

        loc = torch.tensor([[-1.0], [1.0]])              # two draws, one example
        value = mixture_log_prob(torch.zeros(1), loc, torch.ones(2, 1))
        expected = -0.5 - 0.5 * math.log(2 * math.pi)    # both components: density at z = 1
        assert abs(float(value[0]) - expected) < 1e-12
    """
    log_p = component_log_prob(y, loc, scale, df)
    return torch.logsumexp(log_p, 0) - math.log(log_p.shape[0])


def mixture_cdf(
    y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: float | torch.Tensor | None = None
) -> torch.Tensor:
    """The mixture CDF ``F(v) = mean_s CDF(v; loc_s, scale_s)`` at values of shape ``(..., n)``.

    ``y`` may hold several rows of values per example (``(L, n)``); the result has its shape.
    It need not be finite (``F(-inf) = 0``), so it also serves the bisection of
    :func:`mixture_quantile`.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import mixture_cdf

        loc = torch.tensor([[-1.0], [1.0]])
        assert float(mixture_cdf(torch.zeros(1), loc, torch.ones(2, 1))[0]) == 0.5   # symmetric
    """
    if not isinstance(y, torch.Tensor) or y.dim() < 1:
        raise ValueError("mixture_cdf needs a tensor of values of shape (..., n)")
    loc, scale, df = _check_components(loc, scale, df, y.shape[-1])
    values = y.detach().to("cpu", _F64)
    lead = values.shape[:-1]
    flat = values.reshape(-1, 1, values.shape[-1])  # (L, 1, n) against (S, n)
    cdf = _component_cdf(flat, loc, scale, None if df is None else df.expand(len(flat), *df.shape))
    return cdf.mean(1).reshape(*lead, values.shape[-1])


def pit(
    y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: float | torch.Tensor | None = None
) -> torch.Tensor:
    """The probability integral transform ``F(y_i)`` of each target, ``(n,)`` in ``[0, 1]``.

    For a calibrated predictive the PIT values are uniform; ``y_i`` lies in the central interval
    of level ``a`` exactly when ``|2 F(y_i) - 1| <= a``.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import pit

        u = pit(torch.tensor([0.0, 10.0]), torch.zeros(2), torch.ones(2))
        assert u[0] == 0.5 and u[1] > 0.999
    """
    y = _check_targets(y)
    return mixture_cdf(y, loc, scale, df)


def _levels(level: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    levels = torch.as_tensor(level, dtype=_F64).reshape(-1)
    if levels.numel() == 0 or not bool(((levels > 0) & (levels < 1)).all()):
        raise ValueError(f"levels of central intervals must lie in (0, 1), got {level!r}")
    return levels


def mixture_quantile(
    p: float | Sequence[float] | torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    df: float | torch.Tensor | None = None,
    *,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> torch.Tensor:
    """Quantiles ``q(p)`` of the mixture of each example, shape ``(len(p), n)``, by bisection.

    The bracket is ``[min_s, max_s]`` of the components' own quantiles ``loc_s + scale_s z_p``
    (the mixture CDF is at most ``p`` at the first and at least ``p`` at the second); it is
    halved until its width is below ``tol`` times the largest scale (or ``max_iter`` halvings),
    and the midpoint is returned. A single component gives its own quantile.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import mixture_quantile

        q = mixture_quantile([0.025, 0.975], torch.zeros(1), torch.ones(1))
        assert abs(float(q[1, 0]) - 1.959964) < 1e-6 and abs(float(q[0, 0] + q[1, 0])) < 1e-9
    """
    probs = _levels(p)
    loc, scale, df = _check_components(loc, scale, df, None)
    shape = (len(probs), *loc.shape)  # (L, S, n)
    z = _standard_quantile(probs.reshape(-1, 1, 1).expand(shape), None if df is None else df)
    own = loc + scale * z
    low, high = own.min(1).values, own.max(1).values
    if loc.shape[0] == 1:
        return own[:, 0]
    width = tol * float(scale.max())
    target = probs.reshape(-1, 1)
    for _ in range(max_iter):
        if float((high - low).max()) <= width:
            break
        middle = (low + high) / 2
        below = mixture_cdf(middle, loc, scale, df) < target
        low = torch.where(below, middle, low)
        high = torch.where(below, high, middle)
    return (low + high) / 2


def predictive_mean(loc: torch.Tensor) -> torch.Tensor:
    """The mean of the mixture, ``mean_s loc_s``, shape ``(n,)``: the point prediction of
    :func:`rmse` and :func:`mae` (for StudentT components with ``df <= 1``, whose mean does not
    exist, it is the mean of their medians).

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import predictive_mean

        assert predictive_mean(torch.tensor([[1.0, 2.0], [3.0, 4.0]])).tolist() == [2.0, 3.0]
    """
    return _as_draws(loc, "loc").mean(0)


def _point(y: torch.Tensor, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = _check_targets(y)
    mean = predictive_mean(loc)
    if mean.shape != y.shape:
        raise ValueError(
            f"loc has {mean.shape[0]} examples per draw but there are {len(y)} targets"
        )
    return y, mean


def rmse(y: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Root mean squared error of the predictive mean, ``sqrt(mean_i (y_i - mean_s loc_si)^2)``.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import rmse

        assert rmse(torch.tensor([1.0, -1.0]), torch.zeros(2)) == 1.0
    """
    y, mean = _point(y, loc)
    return (y - mean).square().mean().sqrt()


def mae(y: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the predictive mean, ``mean_i |y_i - mean_s loc_si|``.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import mae

        assert mae(torch.tensor([1.0, -3.0]), torch.zeros(2)) == 2.0
    """
    y, mean = _point(y, loc)
    return (y - mean).abs().mean()


def nll(
    y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean negative log density of the mixture predictive, ``-mean_i log p(y_i | x_i)``.

    Usage::

        import math
        import torch
        from pyro_otmdr.evaluation.regression import nll

        value = nll(torch.zeros(2), torch.zeros(2), torch.ones(2))   # N(0, 1) at 0
        assert abs(float(value) - 0.5 * math.log(2 * math.pi)) < 1e-12
    """
    return -mixture_log_prob(y, loc, scale, df).mean()


def _abs_normal_mean(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``E|Z|`` for ``Z ~ Normal(mu, var)``: ``mu (2 Phi(mu / s) - 1) + 2 s phi(mu / s)``."""
    s = var.sqrt()
    z = mu / s
    density = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)
    return mu * (2 * torch.special.ndtr(z) - 1) + 2 * s * density


def _crps_normal_mixture(y, loc, scale) -> torch.Tensor:
    """Exact CRPS of each example (Grimit et al. 2006): with equal weights ``1/S``,
    ``mean_s A(y - loc_s, scale_s^2) - mean_{s,t} A(loc_s - loc_t, scale_s^2 + scale_t^2) / 2``
    where ``A(mu, var) = E|Z|`` for ``Z ~ Normal(mu, var)``."""
    var = scale.square()
    first = _abs_normal_mean(y - loc, var).mean(0)
    draws, n = loc.shape
    chunk = max(1, _PAIR_CHUNK // (draws * draws))
    second = torch.empty(n, dtype=_F64)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        mu = loc[:, None, part] - loc[None, :, part]
        pair_var = var[:, None, part] + var[None, :, part]
        second[part] = _abs_normal_mean(mu, pair_var).mean((0, 1))
    return first - second / 2


def _crps_samples(y, loc, scale, df, num_samples: int, seed: int) -> torch.Tensor:
    """The fair CRPS estimate of each example from ``num_samples`` iid draws of the mixture:
    ``mean_m |x_m - y| - sum_{m != m'} |x_m - x_m'| / (2 M (M - 1))``, unbiased for the CRPS."""
    rng = np.random.default_rng(seed)
    draws, n = loc.shape
    m = num_samples
    component = torch.from_numpy(rng.integers(0, draws, size=(m, n)))
    standard = torch.from_numpy(rng.standard_t(df.gather(0, component).numpy()))
    x = loc.gather(0, component) + scale.gather(0, component) * standard  # (M, n)
    first = (x - y).abs().mean(0)
    ordered = x.sort(0).values
    weights = (2 * torch.arange(1, m + 1, dtype=_F64) - m - 1).unsqueeze(-1)
    spread = (weights * ordered).sum(0) / (m * (m - 1))  # sum_{m != m'} |x_m - x_m'| / (2M(M-1))
    return first - spread


def crps(
    y: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    df: float | torch.Tensor | None = None,
    *,
    num_samples: int = 1000,
    seed: int = 0,
) -> torch.Tensor:
    """Mean continuous ranked probability score ``CRPS(F, y) = E|X - y| - E|X - X'| / 2``.

    Normal components (``df=None``): the exact mixture-of-Gaussians formula, which for one
    component is the closed form ``scale (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))`` with
    ``z = (y - loc) / scale``. StudentT components: the fair estimate from ``num_samples`` iid
    draws of the mixture (a numpy generator seeded with ``seed``), unbiased for the CRPS; it is
    finite in expectation only for ``df > 1``. Lower is better; in the targets' units.

    Usage::

        import math
        import torch
        from pyro_otmdr.evaluation.regression import crps

        value = crps(torch.zeros(1), torch.zeros(1), torch.ones(1))   # N(0, 1) at its mean
        assert abs(float(value) - (2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi))) < 1e-12
    """
    y, loc, scale, df = _checked(y, loc, scale, df)
    if df is None:
        return _crps_normal_mixture(y, loc, scale).mean()
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
    return _crps_samples(y, loc, scale, df, num_samples, seed).mean()


def coverage(
    y: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    level: float | Sequence[float] | torch.Tensor,
    df: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of targets inside the central interval ``[q((1-a)/2), q((1+a)/2)]`` of level
    ``a`` (a number: a 0-d result; several: one per level).

    ``y`` lies in that interval exactly when its PIT ``F(y)`` lies in ``[(1-a)/2, (1+a)/2]``
    (``F`` is continuous and increasing), which is how it is computed: exact, and the same
    for every level.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import coverage

        y = torch.tensor([0.0, 0.5, 1.0, 3.0])          # N(0, 1): the 90% interval is +-1.645
        assert coverage(y, torch.zeros(4), torch.ones(4), 0.9) == 0.75
    """
    u = pit(y, loc, scale, df)
    levels = _levels(level)
    inside = (2 * u - 1).abs().unsqueeze(0) <= levels.unsqueeze(-1)
    out = inside.to(_F64).mean(-1)
    return out.reshape(()) if torch.as_tensor(level).dim() == 0 else out


def interval_width(
    loc: torch.Tensor,
    scale: torch.Tensor,
    level: float | Sequence[float] | torch.Tensor,
    df: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean width ``mean_i q_i((1+a)/2) - q_i((1-a)/2)`` of the central intervals of level ``a``
    (quantiles by :func:`mixture_quantile`); in the targets' units.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import interval_width

        width = interval_width(torch.zeros(3), 2 * torch.ones(3), 0.9)   # 2 * 1.645 * 2
        assert abs(float(width) - 4 * 1.6448536) < 1e-6
    """
    levels = _levels(level)
    bounds = mixture_quantile(torch.cat([(1 - levels) / 2, (1 + levels) / 2]), loc, scale, df)
    widths = (bounds[len(levels) :] - bounds[: len(levels)]).mean(-1)
    return widths.reshape(()) if torch.as_tensor(level).dim() == 0 else widths


def calibration_curve(
    y: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    df: float | torch.Tensor | None = None,
    *,
    num_levels: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Observed against nominal coverage of the central intervals: ``(nominal, observed)``.

    The nominal levels are the midpoints ``(k - 1/2) / num_levels``, ``k = 1 .. num_levels``;
    the observed coverage at each is :func:`coverage`. A calibrated predictive lies on the
    diagonal; below it, over-confident (intervals too narrow).

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import calibration_curve

        y = torch.randn(1000, generator=torch.Generator().manual_seed(0))
        nominal, observed = calibration_curve(y, torch.zeros(1000), torch.ones(1000))
        assert nominal.shape == observed.shape == (100,)
        assert (observed - nominal).abs().max() < 0.06      # the right predictive
    """
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
    nominal = (torch.arange(num_levels, dtype=_F64) + 0.5) / num_levels
    return nominal, coverage(y, loc, scale, nominal, df)


def calibration_error(
    y: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    df: float | torch.Tensor | None = None,
    *,
    num_levels: int = 100,
) -> torch.Tensor:
    """The area between the observed and the nominal coverage curves of
    :func:`calibration_curve`, ``mean_k |observed_k - nominal_k|`` (the midpoint rule of
    ``int_0^1 |coverage(a) - a| da``); 0 for a calibrated predictive, at most 1/2.

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import calibration_error

        y = 3 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
        assert calibration_error(y, torch.zeros(1000), 3 * torch.ones(1000)) < 0.03
        assert calibration_error(y, torch.zeros(1000), torch.ones(1000)) > 0.2   # too narrow
    """
    nominal, observed = calibration_curve(y, loc, scale, df, num_levels=num_levels)
    return (observed - nominal).abs().mean()


def regression_metrics(
    y: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    df: float | torch.Tensor | None = None,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    width_level: float = 0.9,
    num_levels: int = 100,
) -> dict[str, float]:
    """Every regression metric of the mixture predictive, as floats.

    Keys: ``rmse``, ``mae``, ``nll``, ``crps``, ``coverage_<100 a>`` for each of ``levels``
    (``coverage_50``, ``coverage_90``, ``coverage_95``), ``interval_width_<100 a>`` for
    ``width_level`` (``interval_width_90``) and ``calibration_error`` (see the module
    docstring for the definitions).

    Usage::

        import torch
        from pyro_otmdr.evaluation.regression import regression_metrics

        y = torch.randn(200, generator=torch.Generator().manual_seed(0))
        loc = 0.1 * torch.randn(8, 200, generator=torch.Generator().manual_seed(1))
        metrics = regression_metrics(y, loc, torch.ones(8, 200))   # 8 draws
        assert set(metrics) == {"rmse", "mae", "nll", "crps", "coverage_50", "coverage_90",
                                "coverage_95", "interval_width_90", "calibration_error"}
    """
    y, loc, scale, df = _checked(y, loc, scale, df)
    out = {
        "rmse": float(rmse(y, loc)),
        "mae": float(mae(y, loc)),
        "nll": float(nll(y, loc, scale, df)),
        "crps": float(crps(y, loc, scale, df)),
    }
    observed = coverage(y, loc, scale, list(levels), df)
    for level, value in zip(levels, observed.tolist(), strict=True):
        out[f"coverage_{_percent(level)}"] = value
    out[f"interval_width_{_percent(width_level)}"] = float(
        interval_width(loc, scale, width_level, df)
    )
    out["calibration_error"] = float(calibration_error(y, loc, scale, df, num_levels=num_levels))
    return out


def _percent(level: float) -> str:
    percent = 100 * level
    return f"{percent:g}".replace(".", "_")
