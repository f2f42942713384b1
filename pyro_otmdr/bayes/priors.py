"""An isotropic zero-mean normal prior whose log-density is one fused reduction.

``Normal(0, s).expand(shape).to_event(n)`` evaluates ``-(x - 0)^2 / (2 s^2) - log s -
log sqrt(2 pi)`` entry by entry over expanded constant tensors (a subtraction, a square, a
division, a log of the expanded scale) and then sums them, per weight tensor per pass.
:class:`IsotropicNormal` is that same ``Independent`` distribution, but its ``log_prob`` is
``-0.5 * sum(x^2) / s^2 - numel * (log s + 0.5 log 2 pi)`` over the event dimensions: one square
and one sum per tensor, the constants computed once. Everything else (sampling, support, shapes,
what Pyro's initialisation strategies see) is the expanded ``Normal``'s, and the analytic KL
divergence that ``TraceMeanField_ELBO`` takes from a mean-field normal guide (``AutoNormal``) is
registered, with the ``Independent`` rule as the fallback for any other guide.

Usage::

    import torch
    from pyro.distributions import Normal
    from pyro_otmdr.bayes.priors import IsotropicNormal

    prior = IsotropicNormal(torch.tensor(0.5), event_shape=(512, 64))
    w = torch.randn(512, 64)
    expanded = Normal(0.0, 0.5).expand((512, 64)).to_event(2)
    assert torch.allclose(prior.log_prob(w), expanded.log_prob(w))
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import Independent, Normal, kl_divergence, register_kl

__all__ = ["IsotropicNormal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class IsotropicNormal(dist.Independent):
    """``Normal(0, scale)`` on every entry of a tensor of ``event_shape``, the entries independent.

    It *is* ``Normal(0, scale).expand(event_shape).to_event(len(event_shape))`` (an
    ``Independent`` over that ``base_dist``, so Pyro's initialisation strategies, supports and
    shapes see the old prior), with a fused :meth:`log_prob` whose value and gradient equal the
    expanded ``Normal``'s up to floating-point rounding. Sampling, ``support``, ``mean``,
    ``variance`` and ``entropy`` are ``Independent``'s, unchanged.

    :param scale: the standard deviation, a 0-d tensor (it fixes dtype and device).
    :param event_shape: the shape of one draw.

    Usage::

        import torch
        from pyro_otmdr.bayes.priors import IsotropicNormal

        prior = IsotropicNormal(torch.tensor(1.0), event_shape=(10, 3))
        w = prior.rsample()
        assert w.shape == (10, 3)
        assert prior.log_prob(w).shape == ()   # a 0-d tensor
    """

    def __init__(
        self,
        scale: torch.Tensor,
        event_shape: tuple[int, ...] | torch.Size,
        validate_args: bool | None = None,
    ) -> None:
        if scale.dim() != 0:
            raise ValueError(f"scale must be a 0-d tensor, got shape {tuple(scale.shape)}")
        event_shape = torch.Size(event_shape)
        self.scale = scale
        self._coefficients: tuple[torch.Tensor, torch.Tensor] | None = None
        base = dist.Normal(scale.new_zeros(()), scale, validate_args=validate_args)
        super().__init__(base.expand(event_shape), len(event_shape), validate_args)

    def expand(self, batch_shape, _instance=None) -> IsotropicNormal:
        """The same prior with ``batch_shape`` independent copies (no data is copied)."""
        new = self._get_checked_instance(IsotropicNormal, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.scale = self.scale
        new._coefficients = self._coefficients
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``-0.5 * sum(x^2) / scale^2 - numel * (log scale + 0.5 log 2 pi)`` over the event."""
        if self._validate_args:
            self._validate_sample(value)
        n = len(self.event_shape)
        square = value.square()
        sum_sq = square.sum(tuple(range(-n, 0))) if n else square
        factor, const = self.coefficients()
        return torch.addcmul(const, sum_sq, factor)

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-0.5 / scale^2, -numel * (log scale + 0.5 log 2 pi))``, kept while ``scale`` is.

        They are computed once per distribution (a constant ``scale`` has no graph to keep);
        a ``scale`` that requires grad gets them afresh at every call.
        """
        if self._coefficients is not None:
            return self._coefficients
        factor = -0.5 / self.scale.square()
        const = -self.event_shape.numel() * (self.scale.log() + _HALF_LOG_2PI)
        if not self.scale.requires_grad:
            self._coefficients = (factor, const)
        return factor, const

    def to_normal(self) -> dist.Independent:
        """The same ``Independent`` over the same expanded ``Normal``, with Torch's log-density."""
        return dist.Independent(self.base_dist, self.reinterpreted_batch_ndims)


@register_kl(Independent, IsotropicNormal)
def _kl_independent_isotropic(p: Independent, q: IsotropicNormal) -> torch.Tensor:
    """``KL(Normal(loc, s).to_event(n) || q)``: the ``Independent``-``Independent`` rule's result.

    A ``Normal`` (subclasses included, as in Torch's own ``Normal``-``Normal`` rule) over the
    prior's event takes the fused formula; any other guide falls back to :meth:`to_normal`.
    """
    if not isinstance(p.base_dist, Normal) or p.reinterpreted_batch_ndims != len(q.event_shape):
        return kl_divergence(p, q.to_normal())
    return _kl_normal_isotropic(p.base_dist, q)


@register_kl(Normal, IsotropicNormal)
def _kl_plain_normal_isotropic(p: Normal, q: IsotropicNormal) -> torch.Tensor:
    """``KL(Normal(loc, s) || q)`` for a prior without event dimensions (a 0-d weight)."""
    if q.event_shape:
        return kl_divergence(p, q.to_normal())
    return _kl_normal_isotropic(p, q)


def _kl_normal_isotropic(p: Normal, q: IsotropicNormal) -> torch.Tensor:
    """Torch's ``Normal``-``Normal`` KL with ``q.loc = 0``, summed over ``q``'s event dims."""
    var_ratio = (p.scale / q.scale).pow(2)
    t1 = (p.loc / q.scale).pow(2)
    kl = 0.5 * (var_ratio + t1 - 1 - var_ratio.log())
    n = len(q.event_shape)
    return kl.sum(tuple(range(-n, 0))) if n else kl
