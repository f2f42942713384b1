"""One pass of a wrapped ELBO whose loss stays a tensor on its device.

Pyro's ``Trace_ELBO.loss_and_grads`` turns every site's log-density into a Python float as it
sums them (one device synchronisation per site on a GPU), and so does its
``differentiable_loss`` (an ``ELBOModule``'s forward). :func:`loss_and_grads_on_device` and
:func:`differentiable_loss_on_device` take the same pass for a ``Trace_ELBO``, with the same
traces and the same surrogate (so the same gradients), and return the loss as a 0-d tensor, left
for the step to check once when it ends. A guide with a score-function site keeps one conversion
per particle (Pyro's own particle loss); any other ELBO takes its own methods.

Usage::

    import math
    import pyro
    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.model_space.device_loss import loss_and_grads_on_device

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    guide = AutoNormal(model)
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    guide(x, y)                                      # set the autoguide up
    pyro.set_rng_seed(1)
    loss = loss_and_grads_on_device(Trace_ELBO(), model, guide, (x, y), {})   # a tensor
    pyro.set_rng_seed(1)
    reference = Trace_ELBO().loss_and_grads(model, guide, x, y)              # Pyro's float
    assert isinstance(loss, torch.Tensor) and math.isclose(loss, reference, rel_tol=1e-5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer import ELBO, Trace_ELBO
from pyro.poutine import Trace

__all__ = ["differentiable_loss_on_device", "loss_and_grads_on_device"]


def loss_and_grads_on_device(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> torch.Tensor | float:
    """``elbo.loss_and_grads(model, guide, *args, **kwargs)``, with the loss kept as a tensor
    when ``elbo`` is a ``Trace_ELBO`` (exactly). Like Pyro, one backward pass per particle."""
    if type(elbo) is not Trace_ELBO:
        return elbo.loss_and_grads(model, guide, *args, **kwargs)
    loss: torch.Tensor | float = 0.0
    for particle, trainable in _particle_losses(elbo, model, guide, args, kwargs):
        loss = loss + particle.detach()
        if trainable and particle.requires_grad:
            particle.backward(retain_graph=elbo.retain_graph)
    return loss


def differentiable_loss_on_device(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> torch.Tensor:
    """``elbo.differentiable_loss(model, guide, *args, **kwargs)`` (what an ``ELBOModule``
    returns), with no float conversion when ``elbo`` is a ``Trace_ELBO`` (exactly)."""
    if type(elbo) is not Trace_ELBO:
        return elbo.differentiable_loss(model, guide, *args, **kwargs)
    return sum(particle for particle, _ in _particle_losses(elbo, model, guide, args, kwargs))


def _particle_losses(
    elbo: Trace_ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> Iterator[tuple[torch.Tensor, bool]]:
    """Each particle's loss divided by the number of particles, and whether its traces hold a
    parameter (Pyro backpropagates only then), one particle at a time."""
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        trainable = any(
            site["type"] == "param"
            for trace in (model_trace, guide_trace)
            for site in trace.nodes.values()
        )
        yield _particle_loss(elbo, model_trace, guide_trace) / elbo.num_particles, trainable


def _particle_loss(elbo: Trace_ELBO, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
    """One particle's loss, differentiable as ``Trace_ELBO``'s surrogate: that surrogate itself
    for a reparameterised guide; else Pyro's value carrying the surrogate's gradient."""
    surrogate = _reparameterised_surrogate(model_trace, guide_trace)
    if surrogate is not None:
        return surrogate
    value, surrogate = elbo._differentiable_loss_particle(model_trace, guide_trace)
    if not isinstance(surrogate, torch.Tensor):  # no site at all
        return torch.tensor(float(value))
    return surrogate + (value - surrogate.detach())


def _reparameterised_surrogate(model_trace: Trace, guide_trace: Trace) -> torch.Tensor | None:
    """``Trace_ELBO``'s surrogate loss of one particle, summed as it sums it, or ``None`` when a
    guide site has a score-function term. For a reparameterised guide it is also the loss."""
    surrogate_elbo = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            _, score_function_term, entropy_term = site["score_parts"]
            if not is_identically_zero(score_function_term):
                return None
            if not is_identically_zero(entropy_term):
                surrogate_elbo = surrogate_elbo - entropy_term.sum()
    if not isinstance(surrogate_elbo, torch.Tensor):
        return None
    return -surrogate_elbo
