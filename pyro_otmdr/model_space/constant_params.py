"""An effect handler that serves parameters which are constants in a pass from a per-step cache.

Within one OT-MDR step the parameters that are not perturbed (a Gaussian guide's scales) keep
their values, and in every pass whose gradient for them is thrown away the step engine makes them
constants (``requires_grad`` off). Pyro would still recompute each one's constrained value from
the unconstrained leaf at every pass (a softplus over every weight, for ``AutoNormal``'s scales);
:class:`ConstantParams` returns the value that the step's first pass computed, detached, for each
parameter whose leaf does not require grad at the time of the call. The value is the same, so
nothing downstream changes; a parameter that requires grad is left to Pyro.

Usage::

    constants = ConstantParams()
    with poutine.trace(param_only=True) as capture:   # the step's first pass
        elbo.loss_and_grads(model, guide, x1, y1)
    constants.record(capture.trace.nodes["AutoNormal.scales.w"])
    with constants:                                   # a later pass
        elbo.loss_and_grads(model, guide, x2, y2)
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

    def _pyro_param(self, msg: dict) -> None:
        found = self._values.get(msg["name"])
        if found is not None and not found[0].requires_grad and msg["value"] is None:
            msg["value"] = found[1]


def _detached(value: torch.Tensor) -> torch.Tensor:
    """``value`` without its graph, still pointing to its unconstrained leaf as Pyro's do."""
    detached = value.detach()
    detached.unconstrained = value.unconstrained
    return detached
