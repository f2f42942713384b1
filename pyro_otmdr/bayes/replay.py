"""Posterior draws of a Pyro guide, and the model replayed under them.

A *draw* is one set of latent values to condition the model on:

* ``AutoDelta`` (and subclasses): one draw, the point estimate;
* an ensemble guide (:func:`~pyro_otmdr.bayes.members.is_ensemble`, with a method
  ``member_values(m, *args) -> dict``): every member once;
* any other guide (``AutoNormal``, ...): ``num_samples`` draws of its latent sites.

The model is then replayed with ``poutine.condition`` and its observed categorical site read as
normalised log-probabilities (:func:`site_log_probs`), or its observed Normal or StudentT site as
the location and scale of each example (:func:`site_regression`); :func:`observed_likelihood`
says which of the two a site is. Evaluation and the attacks share these helpers.

Usage::

    import torch
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.bayes.replay import draw_kind, latent_values, site_log_probs

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    guide = AutoNormal(model)
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    guide(x, y)                                            # set the autoguide up
    kind, num_draws = draw_kind(guide, num_samples=32)     # ("sample", 32)
    latents = latent_values(guide, kind, 0, x)
    log_probs = site_log_probs(model, latents, x, "obs")
    assert log_probs.shape == (8, 3)                       # (len(x), C)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoDelta
from pyro.poutine.util import site_is_subsample

from .members import is_ensemble, members_of

__all__ = [
    "OBSERVED_LIKELIHOODS",
    "categorical_of",
    "draw_kind",
    "guide_device",
    "guide_latents",
    "latent_values",
    "observed_likelihood",
    "observed_node",
    "seeded_rng",
    "site_log_probs",
    "site_regression",
    "trace_latents",
]

#: The observed distributions that evaluation reads, by the name :func:`observed_likelihood`
#: gives them (the ``likelihood=`` names of :func:`~pyro_otmdr.bayes.bayesian`).
OBSERVED_LIKELIHOODS: dict[str, type[torch.distributions.Distribution]] = {
    "categorical": torch.distributions.Categorical,
    "normal": torch.distributions.Normal,
    "studentt": torch.distributions.StudentT,
}


def guide_device(guide: Callable, device: str | torch.device | None) -> torch.device:
    """``device`` if given, else the device of the guide's parameters, else of the param store."""
    if device is not None:
        return torch.device(device)
    if isinstance(guide, torch.nn.Module):
        param = next(iter(guide.parameters()), None)
        if param is not None:
            return param.device
    for _, param in pyro.get_param_store().named_parameters():
        return param.device
    return torch.device("cpu")


def draw_kind(guide: Callable, num_samples: int) -> tuple[str, int]:
    """``("delta", 1)``, ``("ensemble", num_members)`` or ``("sample", num_samples)``."""
    if isinstance(guide, AutoDelta):
        return "delta", 1
    if is_ensemble(guide):
        return "ensemble", members_of(guide, "member_values")
    return "sample", num_samples


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the torch RNG seeded to ``seed``; restore the global state after it."""
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def latent_values(
    guide: Callable, kind: str, index: int, x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Latent values of draw ``index``, to condition the model on for every test chunk."""
    if kind == "delta":
        values = guide(x)
    elif kind == "ensemble":
        values = guide.member_values(index, x)
    else:
        values = guide_latents(guide, (x,), {})
    if not isinstance(values, dict):
        raise ValueError(
            f"the guide must give a dict of latent values, got {type(values).__name__}"
        )
    return values


def trace_latents(trace: poutine.Trace) -> dict[str, torch.Tensor]:
    """The latent values of a trace: sample sites that are not observed, subsample indices or
    auxiliary (an ``AutoDiagonalNormal``'s packed vector)."""
    return {
        name: node["value"]
        for name, node in trace.nodes.items()
        if node["type"] == "sample"
        and not node["is_observed"]
        and not site_is_subsample(node)
        and not node["infer"].get("is_auxiliary", False)
    }


def guide_latents(guide: Callable, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """One draw of the guide's latent values for the model arguments ``(args, kwargs)``."""
    return trace_latents(poutine.trace(guide).get_trace(*args, **kwargs))


def categorical_of(fn: Any, site: str) -> torch.distributions.Categorical:
    """Unwrap masks, ``Independent`` and other wrappers down to a ``Categorical``."""
    while not isinstance(fn, torch.distributions.Categorical) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if not isinstance(fn, torch.distributions.Categorical):
        raise ValueError(
            f"site {site!r} must hold a Categorical distribution (possibly masked or wrapped in "
            f"Independent), got {type(fn).__name__}"
        )
    return fn


def _unwrapped(fn: Any) -> Any:
    """``fn`` without masks, ``Independent`` and expansions (not transforms: a LogNormal stays)."""
    while hasattr(fn, "base_dist") and not isinstance(
        fn, torch.distributions.TransformedDistribution
    ):
        fn = fn.base_dist
    return fn


def observed_likelihood(fn: Any, site: str) -> str:
    """The name in :data:`OBSERVED_LIKELIHOODS` of the distribution of an observed site.

    Masks, ``Independent`` and expansions are unwrapped first.

    :raises ValueError: for any other distribution, naming the supported ones.

    Usage::

        import pyro.distributions as dist
        import torch
        from pyro_otmdr.bayes.replay import observed_likelihood

        normal = dist.Normal(torch.zeros(3), 1.0).to_event(1)
        assert observed_likelihood(normal, "obs") == "normal"
        assert observed_likelihood(dist.Categorical(logits=torch.zeros(2)), "obs") == "categorical"
    """
    inner = _unwrapped(fn)
    for name, kind in OBSERVED_LIKELIHOODS.items():
        if isinstance(inner, kind):
            return name
    raise ValueError(
        f"site {site!r} must hold a Categorical distribution (classification) or a Normal or "
        f"StudentT distribution (regression), possibly masked or wrapped in Independent; got "
        f"{type(inner).__name__}"
    )


def observed_node(model: Callable, latents: dict, x: torch.Tensor, site: str) -> dict:
    """The trace node of the model's sample site ``site``, the model run on ``x`` under
    ``latents``; a ``ValueError`` naming the sample sites if there is none of that name."""
    trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(x)
    node = trace.nodes.get(site)
    if node is None or node["type"] != "sample":
        sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
        raise ValueError(f"the model trace has no sample site {site!r}; pass site= one of {sites}")
    return node


def site_regression(
    model: Callable, latents: dict, x: torch.Tensor, site: str
) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(likelihood, loc, scale, df)`` of the model's Normal or StudentT site under fixed latents.

    ``loc`` and ``scale`` have shape ``(len(x),)`` (one distribution per example); ``df`` too for
    a StudentT, else ``None``.

    Usage::

        import torch
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.bayes.replay import guide_latents, site_regression

        model = bayesian(torch.nn.Linear(4, 1), num_data=8, likelihood="normal")
        x = torch.randn(8, 4)
        latents = guide_latents(AutoNormal(model), (x, torch.randn(8)), {})
        likelihood, loc, scale, df = site_regression(model, latents, x, "obs")
        assert likelihood == "normal" and loc.shape == scale.shape == (8,) and df is None
        assert torch.equal(scale, latents["sigma"].expand(8))   # homoscedastic: one sigma
    """
    fn = observed_node(model, latents, x, site)["fn"]
    likelihood = observed_likelihood(fn, site)
    if likelihood == "categorical":
        raise ValueError(
            f"site {site!r} holds a Categorical distribution (a classifier), not a Normal or "
            "StudentT (regression)"
        )
    inner = _unwrapped(fn)
    n = x.shape[0]
    params = [inner.loc, inner.scale] + ([inner.df] if likelihood == "studentt" else [])
    shape = torch.broadcast_shapes(*(p.shape for p in params))
    if shape.numel() != n:
        raise ValueError(
            f"site {site!r} has batch shape {tuple(shape)}, expected one distribution per "
            f"example ({n})"
        )
    loc, scale, *df = (p.expand(shape).reshape(n) for p in params)
    return likelihood, loc, scale, (df[0] if df else None)


def site_log_probs(model: Callable, latents: dict, x: torch.Tensor, site: str) -> torch.Tensor:
    """Normalised log-probabilities ``(len(x), C)`` of the model's site under fixed latents."""
    node = observed_node(model, latents, x, site)
    logits = categorical_of(node["fn"], site).logits
    if logits.shape[:-1].numel() != x.shape[0]:
        raise ValueError(
            f"site {site!r} has batch shape {tuple(logits.shape[:-1])}, expected one "
            f"distribution per example ({x.shape[0]})"
        )
    return torch.log_softmax(logits.reshape(x.shape[0], logits.shape[-1]), dim=-1)
