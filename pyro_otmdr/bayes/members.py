"""What an ensemble guide is, and running a loss once per member: one definition for the package.

An ensemble guide has an ``int`` attribute ``num_members`` and at least one of: a context
manager ``member(index)`` that makes member ``index`` the guide inside it (what training needs),
and a method ``member_values(index, *args) -> dict`` of member ``index``'s latent values (what
the posterior draws need). :class:`~pyro_otmdr.AutoDeltaEnsemble` has both. Every wrapper ELBO,
the posterior draws and the tooling ask :func:`is_ensemble`; a use that needs the part a guide
lacks says so (:func:`members_of`).

Usage::

    import torch
    from pyro.infer import Trace_ELBO
    from pyro_otmdr import AutoDeltaEnsemble
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.bayes.members import is_ensemble, over_members

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    guide, elbo = AutoDeltaEnsemble(model, num_members=3), Trace_ELBO()
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    if is_ensemble(guide):
        total = over_members(guide, lambda: elbo.loss(model, guide, x, y))  # sum of 3 losses
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

__all__ = ["is_ensemble", "members_of", "over_members", "sum_over_members"]


def is_ensemble(guide: object) -> bool:
    """Whether ``guide`` is an ensemble guide: an ``int`` ``num_members`` and ``member`` or
    ``member_values``."""
    members = getattr(guide, "num_members", None)
    if not isinstance(members, int) or isinstance(members, bool):
        return False
    return hasattr(guide, "member") or hasattr(guide, "member_values")


def members_of(guide: Any, needs: str) -> int:
    """The number of members of the ensemble ``guide``, checking that it has ``needs``
    (``"member"`` to train, ``"member_values"`` to draw) and at least one member.

    :raises ValueError: naming what is missing.
    """
    members = guide.num_members
    if members < 1 or not callable(getattr(guide, needs, None)):
        what = "member(index)" if needs == "member" else "member_values(index, *args)"
        raise ValueError(
            f"an ensemble guide needs num_members >= 1 and a method {what} here; "
            f"got num_members={members}"
            + ("" if callable(getattr(guide, needs, None)) else f" and no {needs}")
        )
    return members


def over_members(guide: Any, run: Callable[[], Any]) -> Any:
    """``run()`` for a single guide; for an ensemble, the sum of ``run()`` with each member active.

    Usage::

        import torch
        from pyro.infer import Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.bayes.members import over_members

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        guide, elbo = AutoNormal(model), Trace_ELBO()
        x, y = torch.randn(8, 4), torch.randint(3, (8,))
        total = over_members(guide, lambda: elbo.loss(model, guide, x, y))  # one guide: one run
        assert isinstance(total, float)
    """
    if not is_ensemble(guide):
        return run()
    total = 0.0
    for index in range(members_of(guide, "member")):
        with guide.member(index):
            total = total + run()
    return total


def sum_over_members(guide: Any, loss_and_grads: Callable[[], float]) -> float:
    """Run ``loss_and_grads()`` once per member of ``guide``; return the summed loss.

    Gradients of parameters seen by an earlier member are set aside while the next member runs,
    so that every member's passes start from clean gradients, then added back: parameters shared
    by the members (e.g. the model's own point parameters) end with the sum of their gradients.
    """
    total = 0.0
    summed: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> its gradient over members so far
    for index in range(members_of(guide, "member")):
        for p in summed:
            p.grad = None
        with guide.member(index), poutine.trace(param_only=True) as capture:
            total += loss_and_grads()
        for site in capture.trace.nodes.values():
            p = site["value"].unconstrained()
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            summed[p] = summed[p] + grad if p in summed else grad
    for p, grad in summed.items():
        p.grad = grad
    return total
