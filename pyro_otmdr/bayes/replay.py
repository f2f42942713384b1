"""Posterior draws of a Pyro guide, and the model replayed under them.

A *draw* is one set of latent values to condition the model on:

* ``AutoDelta`` (and subclasses): one draw, the point estimate;
* an ensemble guide (:func:`~pyro_otmdr.bayes.members.is_ensemble`, with a method
  ``member_values(m, *args) -> dict``): every member once;
* any other guide (``AutoNormal``, ...): ``num_samples`` draws of its latent sites.

The model is then replayed with ``poutine.condition`` and its observed categorical site read as
normalised log-probabilities. Evaluation and the attacks share these helpers.

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
    "categorical_of",
    "draw_kind",
    "guide_device",
    "guide_latents",
    "latent_values",
    "seeded_rng",
    "site_log_probs",
    "trace_latents",
]


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


def site_log_probs(model: Callable, latents: dict, x: torch.Tensor, site: str) -> torch.Tensor:
    """Normalised log-probabilities ``(len(x), C)`` of the model's site under fixed latents."""
    trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(x)
    node = trace.nodes.get(site)
    if node is None or node["type"] != "sample":
        sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
        raise ValueError(f"the model trace has no sample site {site!r}; pass site= one of {sites}")
    logits = categorical_of(node["fn"], site).logits
    if logits.shape[:-1].numel() != x.shape[0]:
        raise ValueError(
            f"site {site!r} has batch shape {tuple(logits.shape[:-1])}, expected one "
            f"distribution per example ({x.shape[0]})"
        )
    return torch.log_softmax(logits.reshape(x.shape[0], logits.shape[-1]), dim=-1)
