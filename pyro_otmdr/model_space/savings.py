"""The step's savings: exact shortcuts that make a step cheaper without changing what it computes.

Each one leaves every loss and gradient of a step as it is (up to the rounding of a different
order of operations) and only removes work. All are on by default; switch one off to measure
what it buys or to rule it out while debugging, without patching anything.

Usage::

    from pyro.infer import Trace_ELBO
    from pyro_otmdr import OTMDR
    from pyro_otmdr.model_space import StepSavings

    loss = OTMDR(Trace_ELBO(), rho=0.05, savings=StepSavings(loss_on_device=False))
    reference = OTMDR(Trace_ELBO(), rho=0.05, savings=StepSavings.none())   # every saving off
    assert not any(getattr(reference.engine.savings, name) for name in StepSavings.names())
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["StepSavings"]


@dataclass(frozen=True)
class StepSavings:
    """Which savings a step uses (every field ``True`` by default).

    The parameters that are not perturbed (an AutoNormal's scales) need only the gradient at the
    unperturbed point; the savings avoid the work the other passes would do for them:

    :ivar center_from_halves: take that gradient as ``(|B1| g_B1 + |B2| g_B2) / |B|`` from the
        first particle's two half batches at the unperturbed point (when the loss is a
        per-example mean under the plate idiom and BatchNorm is not in batch-statistics mode),
        instead of a pass over the whole batch.
    :ivar frozen_constants: in every pass whose gradient for them is thrown away, those
        parameters are constants (``requires_grad`` off), so the backward skips them and the
        graph through them. Not under DDP's ``no_sync``.
    :ivar served_constants: in those passes the Pyro route serves their constrained values
        (a scale's softplus) from the step's first pass, detached, instead of recomputing them.
    :ivar closed_form_logq: a diagonal-normal guide site's log-density at its own fixed-noise
        sample is ``-kappa^2/2 - log(2 pi)/2 - log(scale)``, with the first two terms computed
        once per step, instead of Pyro's entry-by-entry computation in every pass.
    :ivar loss_on_device: a ``Trace_ELBO`` pass keeps its loss a tensor (no float conversion,
        hence no GPU synchronisation, per site); the step checks all losses once at its end.
    """

    center_from_halves: bool = True
    frozen_constants: bool = True
    served_constants: bool = True
    closed_form_logq: bool = True
    loss_on_device: bool = True

    @classmethod
    def none(cls) -> StepSavings:
        """Every saving off: the step as its algorithm reads, pass by pass."""
        return cls(**{f.name: False for f in fields(cls)})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The savings by name, in the order of the fields."""
        return tuple(f.name for f in fields(cls))
