"""An effect handler that fixes a guide's reparameterisation noise for a whole training step.

For each reparameterised Gaussian sample site of the guide, standard-normal noise ``kappa`` is drawn
the first time the site is seen (from torch's global generator, as Pyro itself samples, so
``pyro.set_rng_seed`` governs it) and reused by every later pass under the same handler: the value
is ``loc + scale * kappa`` (``loc + scale_tril @ kappa`` for a multivariate normal), so gradients
still flow to ``loc`` and ``scale``. Sites whose value is already given (observed, replayed) are
left alone; a point mass samples its value and returns its log-density there without computing
it entry by entry (it is ``log 1``); other reparameterised distributions are refused with a clear
error.

Usage::

    fixed = FixedReparamNoise()
    loss_a = elbo.loss_and_grads(model, fixed(guide), x)      # draws kappa
    loss_b = elbo.loss_and_grads(model, fixed(guide), x[:8])  # same kappa
"""

from __future__ import annotations

import torch
from pyro import distributions as dist
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, MultivariateNormal, Normal, TransformedDistribution

__all__ = ["FixedReparamNoise"]


class FixedReparamNoise(Messenger):
    """Draw each Gaussian guide site's standard-normal noise once and reuse it.

    ``noise`` maps site names to the ``kappa`` drawn so far; a fresh handler starts a new step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.noise: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        if type(msg["fn"]) is dist.Delta:
            msg["fn"] = _SelfDelta(msg["fn"])
            msg["value"] = msg["fn"].sample_value
            return
        value = self._value(msg["name"], msg["fn"])
        if value is not None:
            msg["value"] = value

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
