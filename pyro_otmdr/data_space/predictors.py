"""A Pyro classifier's posterior predictive as a predictor ``x -> log mean probabilities``.

The attacks take any callable ``x -> logits (B, C)``. For a Bayesian model the one to attack is
the posterior predictive mean ``p(y | x) = mean_s softmax(z_{theta_s}(x))``, whose log serves as
logits (see the docs, Algorithms: Attacking a Bayesian predictor). The draws ``theta_s`` are
those of :mod:`pyro_otmdr.bayes.replay`: the point of an ``AutoDelta``, every member of an
ensemble once, or ``num_samples`` draws of any other guide, drawn with the same seeding as
:func:`~pyro_otmdr.evaluation.evaluate`, so that after the same ``pyro.set_rng_seed`` both use
the same draws.

Usage::

    import torch
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.attacks import posterior_predictive, w_pgd
    from pyro_otmdr.bayes import bayesian

    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide = AutoNormal(model)
    x, y = torch.rand(16, 4), torch.randint(3, (16,))
    guide(x, y)                                                   # set the autoguide up
    predict = posterior_predictive(model, guide, num_samples=8)   # frozen draws
    result = w_pgd(predict, x, y, delta=0.05, steps=5)
    fresh = predict.redraw()                                      # new frozen draws
    transfer = (fresh(result.x_adv).argmax(-1) == y).float().mean()  # accuracy under fresh draws
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..bayes.replay import draw_kind, guide_device, latent_values, seeded_rng, site_log_probs
from .common import check_positive

__all__ = ["PosteriorPredictive", "posterior_predictive"]


class PosteriorPredictive:
    """``x -> log mean_s p(y | x, theta_s)``, shape ``(len(x), C)``; differentiable in ``x``.

    Build it with :func:`posterior_predictive`. Attributes: ``model``, ``guide``, ``site``,
    ``resample``, ``kind`` (``"delta"``, ``"ensemble"`` or ``"sample"``), ``num_draws`` and
    ``device`` (the guide's; inputs are moved there).
    """

    def __init__(
        self, model: Callable, guide: Callable, num_samples: int, resample: bool, site: str
    ) -> None:
        self.model, self.guide, self.site, self.resample = model, guide, site, resample
        self.num_samples = num_samples
        self.kind, self.num_draws = draw_kind(guide, num_samples)
        self.device = guide_device(guide, None)
        self._seed = self._new_seed()
        self._latents: list[dict[str, torch.Tensor]] | None = None

    @staticmethod
    def _new_seed() -> int:
        return int(torch.randint(0, 2**62, ()).item())

    def _draw(self, x: torch.Tensor, seed: int) -> list[dict[str, torch.Tensor]]:
        draws = []
        with torch.no_grad():
            for index in range(self.num_draws):
                with seeded_rng(seed + index, self.device):
                    values = latent_values(self.guide, self.kind, index, x)
                draws.append({name: value.detach() for name, value in values.items()})
        return draws

    def draws(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The latent values of every draw (drawn at the first call unless ``resample``)."""
        if self.resample:
            return self._draw(x, self._new_seed())
        if self._latents is None:
            self._latents = self._draw(x, self._seed)
        return self._latents

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        log_probs = torch.stack(
            [site_log_probs(self.model, latents, x, self.site) for latents in self.draws(x)]
        )
        return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])

    def redraw(self) -> PosteriorPredictive:
        """The same predictive with fresh frozen draws (the same ones for a point or ensemble)."""
        return PosteriorPredictive(
            self.model, self.guide, self.num_samples, self.resample, self.site
        )


def posterior_predictive(
    model: Callable,
    guide: Callable,
    *,
    num_samples: int = 32,
    resample: bool = False,
    site: str = "obs",
) -> PosteriorPredictive:
    """The posterior predictive of a Pyro classifier, as a predictor for the attacks.

    ``model(x)`` must sample ``site`` from a ``Categorical`` (as :func:`~pyro_otmdr.evaluate`
    requires). With ``resample=False`` (the default) the guide is drawn ``num_samples`` times
    ONCE, at the first call, and the model is replayed with those draws on every call: a
    deterministic function of ``x``, as W-PGD's minimum over iterates needs. With
    ``resample=True`` every call draws afresh (an expectation over transformation). The
    predictive runs on the guide's device; inputs are moved there.

    :param model: the Pyro model, ``model(x, y=None)``.
    :param guide: ``AutoDelta`` (its point), an ensemble guide (every member once) or any other
        guide (``num_samples`` draws).
    :param num_samples: draws for a guide that is neither a point nor an ensemble.
    :param resample: draw afresh on every call.
    :param site: the observed categorical site.
    :raises ValueError: for ``num_samples < 1`` or an empty ``site``.

    Usage::

        import torch
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.attacks import posterior_predictive
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=16)
        guide = AutoNormal(model)
        x, y = torch.rand(16, 4), torch.randint(3, (16,))
        guide(x, y)                        # set the autoguide up
        predict = posterior_predictive(model, guide, num_samples=8)
        log_probs = predict(x)             # (len(x), C), differentiable in x
        assert log_probs.shape == (16, 3)
        assert torch.equal(predict(x), log_probs)   # the same frozen draws at every call
    """
    check_positive("num_samples", num_samples, int)
    if not isinstance(site, str) or not site:
        raise ValueError(f"site must be the name of the observed sample site, got {site!r}")
    return PosteriorPredictive(model, guide, num_samples, bool(resample), site)
