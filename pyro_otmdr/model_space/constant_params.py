"""An effect handler that serves parameters which are constants in a pass from a per-step cache.

Within one OT-MDR step the parameters that are not perturbed (a Gaussian guide's scales) keep
their values, and in every pass whose gradient for them is thrown away the step engine makes them
constants (``requires_grad`` off). Pyro would still recompute each one's constrained value from
the unconstrained leaf at every pass (a softplus over every weight, for ``AutoNormal``'s scales);
:class:`ConstantParams` returns the value that the step's first pass computed, detached, for each
parameter whose leaf does not require grad at the time of the call. The value is the same, so
nothing downstream changes; a parameter that requires grad is left to Pyro.

Usage::

    import torch
    from pyro import poutine
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.model_space.constant_params import ConstantParams

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    guide, elbo = AutoNormal(model), Trace_ELBO()
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    constants = ConstantParams()
    with poutine.trace(param_only=True) as capture:      # the step's first pass
        elbo.loss_and_grads(model, guide, x[:4], y[:4])
    site = capture.trace.nodes["AutoNormal.scales.net.weight"]
    constants.record(site)
    site["value"].unconstrained().requires_grad_(False)  # a constant in the next pass
    with constants, poutine.trace(param_only=True) as later:   # a later pass
        elbo.loss_and_grads(model, guide, x[4:], y[4:])
    served = later.trace.nodes["AutoNormal.scales.net.weight"]["value"]
    assert torch.equal(served, site["value"]) and not served.requires_grad   # the cached value
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger

__all__ = ["ConstantParams"]


class ConstantParams(Messenger):
    """Serve recorded constrained parameter values, detached, while their leaves are constants.

    ``enabled=False`` (the ``served_constants`` saving off) records nothing, so serves nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self._values: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(self, site: dict) -> None:
        """Keep a traced ``param`` site's constrained value, to serve while its leaf is constant."""
        if not self.enabled:
            return
        value = site["value"]
        self._values[site["name"]] = (value.unconstrained(), _detached(value))

    def served(self, name: str) -> torch.Tensor | None:
        """The value served for parameter ``name`` now (its leaf a constant), else ``None``: a
        compiled pass takes it as an input of its graph instead of recomputing it."""
        found = self._values.get(name)
        if found is None or found[0].requires_grad:
            return None
        return found[1]

    def _pyro_param(self, msg: dict) -> None:
        found = self._values.get(msg["name"])
        if found is not None and not found[0].requires_grad and msg["value"] is None:
            msg["value"] = found[1]


def _detached(value: torch.Tensor) -> torch.Tensor:
    """``value`` without its graph, still pointing to its unconstrained leaf as Pyro's do."""
    detached = value.detach()
    detached.unconstrained = value.unconstrained
    return detached
