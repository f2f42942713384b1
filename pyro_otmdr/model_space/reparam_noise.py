"""An effect handler that fixes a guide's reparameterisation noise for a whole training step.

For each reparameterised Gaussian sample site of the guide, standard-normal noise ``kappa`` is drawn
the first time the site is seen (from torch's global generator, as Pyro itself samples, so
``pyro.set_rng_seed`` governs it) and reused by every later pass under the same handler: the value
is ``loc + scale * kappa`` (``loc + scale_tril @ kappa`` for a multivariate normal), so gradients
still flow to ``loc`` and ``scale``. Sites whose value is already given (observed, replayed) are
left alone; other reparameterised distributions are refused with a clear error.

Two log-densities at a site's own sample are known in closed form, and the handler returns them
without Pyro's entry-by-entry computation (any other value still gets Pyro's):

* a point mass: ``log 1`` plus its ``log_density``;
* a diagonal normal at ``loc + scale * kappa``: ``-kappa^2 / 2 - log(2 pi) / 2 - log(scale)``, whose
  first two terms are constant for the step (computed once). This is the same function of ``loc``
  and ``scale`` as ``Normal.log_prob`` at that sample, so the gradients are the same, up to
  rounding: its gradient is ``0`` for ``loc`` and ``-1 / scale`` for ``scale``, which the
  general formula reaches as a sum of terms that cancel.

Usage::

    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise

    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide, elbo = AutoNormal(model), Trace_ELBO()
    x, y = torch.randn(16, 4), torch.randint(3, (16,))
    fixed = FixedReparamNoise()
    loss_a = elbo.loss_and_grads(model, fixed(guide), x, y)            # draws kappa
    kappa = {name: noise.clone() for name, noise in fixed.noise.items()}
    loss_b = elbo.loss_and_grads(model, fixed(guide), x[:8], y[:8])    # same kappa
    assert set(kappa) == {"net.weight_unconstrained", "net.bias_unconstrained"}  # guide sites
    assert all(torch.equal(fixed.noise[name], kappa[name]) for name in kappa)
"""

from __future__ import annotations

import math

import torch
from pyro import distributions as dist
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, MultivariateNormal, Normal, TransformedDistribution

__all__ = ["FixedReparamNoise"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class FixedReparamNoise(Messenger):
    """Draw each Gaussian guide site's standard-normal noise once and reuse it.

    ``noise`` maps site names to the ``kappa`` drawn so far; a fresh handler starts a new step.
    ``closed_form_logq`` (:class:`~pyro_otmdr.model_space.savings.StepSavings`): a diagonal
    normal site's log-density at its own sample in closed form; off, Pyro computes it.
    """

    def __init__(self, closed_form_logq: bool = True) -> None:
        super().__init__()
        self.closed_form_logq = closed_form_logq
        self.noise: dict[str, torch.Tensor] = {}
        self._noise_log_density: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        if type(msg["fn"]) is dist.Delta:
            msg["fn"] = _SelfDelta(msg["fn"])
            msg["value"] = msg["fn"].sample_value
            return
        diagonal = self._diagonal_normal(msg["name"], msg["fn"]) if self.closed_form_logq else None
        if diagonal is not None:
            msg["fn"], msg["value"] = diagonal
            return
        value = self._value(msg["name"], msg["fn"])
        if value is not None:
            msg["value"] = value

    def _diagonal_normal(
        self, name: str, fn: torch.distributions.Distribution
    ) -> tuple[torch.distributions.Distribution, torch.Tensor] | None:
        """``fn``, a (possibly ``Independent``) Pyro ``Normal``, rebuilt on a
        :class:`_FixedNoiseNormal`, and its sample; ``None`` for any other distribution."""
        event_dims = []
        base = fn
        while isinstance(base, Independent):
            event_dims.append(base.reinterpreted_batch_ndims)
            base = base.base_dist
        if type(base) is not dist.Normal:
            return None
        kappa = self._kappa(name, base.loc)
        constant = self._noise_log_density.get(name)
        if constant is None:
            constant = -0.5 * kappa.square() - _HALF_LOG_2PI
            self._noise_log_density[name] = constant
        normal = _FixedNoiseNormal(base, kappa, constant)
        fixed: torch.distributions.Distribution = normal
        for ndims in reversed(event_dims):
            fixed = dist.Independent(fixed, ndims)
        return fixed, normal.sample_value

    def _value(self, name: str, fn: torch.distributions.Distribution) -> torch.Tensor | None:
        while isinstance(fn, Independent):
            fn = fn.base_dist
        if isinstance(fn, dist.Delta) or not fn.has_rsample:
            return None
        if isinstance(fn, Normal):
            return fn.loc + fn.scale * self._kappa(name, fn.loc)
        if isinstance(fn, MultivariateNormal):
            kappa = self._kappa(name, fn.loc)
            return fn.loc + (fn.scale_tril @ kappa.unsqueeze(-1)).squeeze(-1)
        if isinstance(fn, TransformedDistribution):
            base = self._value(name, fn.base_dist)
            if base is not None:
                for transform in fn.transforms:
                    base = transform(base)
                return base
        raise ValueError(
            f"guide site {name!r} is a reparameterised {type(fn).__name__}: OT-MDR fixes the "
            "reparameterisation noise for Normal and MultivariateNormal guide sites (AutoNormal, "
            "AutoDiagonalNormal, AutoMultivariateNormal, AutoDelta); use one of those guides"
        )

    def _kappa(self, name: str, loc: torch.Tensor) -> torch.Tensor:
        kappa = self.noise.get(name)
        if kappa is None:
            kappa = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)
            self.noise[name] = kappa
        elif kappa.shape != loc.shape:
            raise ValueError(
                f"guide site {name!r} changed shape within one step ({tuple(kappa.shape)} -> "
                f"{tuple(loc.shape)}): OT-MDR fixes the reparameterisation noise per site for the "
                "whole step, which needs global latent variables whose shape does not depend on "
                "the batch"
            )
        return kappa


class _FixedNoiseNormal(dist.Normal):
    """A ``Normal`` that drew ``loc + scale * kappa`` and knows its log-density there.

    ``constant`` is ``-kappa^2 / 2 - log(2 pi) / 2``, the same for every pass of the step; the
    log-density at the sample is ``constant - log(scale)``. Other values get ``Normal``'s.
    """

    def __init__(self, normal: dist.Normal, kappa: torch.Tensor, constant: torch.Tensor) -> None:
        super().__init__(normal.loc, normal.scale, validate_args=False)
        self._validate_args = normal._validate_args
        self.sample_value = self.loc + self.scale * kappa
        self._constant = constant

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.sample_value:
            return super().log_prob(x)
        return self._constant - self.scale.log()


class _SelfDelta(dist.Delta):
    """A point mass that knows its log-density at its own sample: ``log 1 + log_density``.

    Pyro's ``Delta.log_prob`` compares, casts and takes the log of every entry at every pass
    (a constant zero with no gradient for an ``AutoDelta``); this returns the same value for
    the sample it drew, and defers to ``Delta`` for any other value.
    """

    def __init__(self, delta: dist.Delta) -> None:
        super().__init__(delta.v, delta.log_density, event_dim=delta.event_dim)
        self.sample_value = delta.rsample()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.sample_value:
            return super().log_prob(x)
        zeros = torch.zeros(self.batch_shape, dtype=x.dtype, device=x.device)
        return zeros + self.log_density
