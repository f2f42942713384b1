"""The uniform mixture of M point estimates (a deep ensemble) as a Pyro guide, and its ELBO.

:class:`AutoDeltaEnsemble` holds M independent ``AutoDelta`` members under its own param-store
names (``AutoDeltaEnsemble.members.<m>.<site>``), so it never collides with an ``AutoDelta`` or
another guide. Called on its own it draws a member uniformly, which makes it a proper sample from
the mixture for :class:`pyro.infer.Predictive`; inside ``with guide.member(m):`` it is member m.

A Pyro ELBO evaluates the guide once per particle, and a network with sampled weights cannot run
M members in one vectorised trace, so training every member at each step is the loss's job:
:class:`EnsembleELBO` runs the wrapped ELBO once per member (a plain deep ensemble), and
:class:`~pyro_otmdr.OTMDR` and :class:`~pyro_otmdr.SAM` run their whole step once per member, each
with its own particles, splits, noise and gradient norm.

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro_otmdr import OTMDR, AutoDeltaEnsemble, EnsembleELBO
    from pyro_otmdr.bayes import bayesian

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    guide = AutoDeltaEnsemble(model, num_members=3)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=EnsembleELBO(Trace_ELBO()))
    svi.step(x, y)                     # a deep ensemble: every member trained
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=OTMDR(Trace_ELBO(), rho=0.05))
    svi.step(x, y)                     # OT-MDR: every member's own sharpness-aware step
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pyro.infer import ELBO
from pyro.infer.autoguide import AutoDelta, init_to_sample
from pyro.nn import PyroModule
from torch import nn

from .members import is_ensemble, over_members
from .wrapper import _JIT_ELBOS, WrapperELBO

__all__ = ["AutoDeltaEnsemble", "EnsembleELBO"]

InitLocFn = Callable[[dict], torch.Tensor]


class AutoDeltaEnsemble(PyroModule):
    """A guide that is a uniform mixture of ``num_members`` point estimates.

    :param model: the Pyro model.
    :param num_members: the number of members M.
    :param init_loc_fn: a Pyro init strategy, or one per member. The default draws every member's
        start from the prior independently (``init_to_sample``).
    :param name: the prefix of the members' param-store names.

    Usage::

        import torch
        from pyro_otmdr import AutoDeltaEnsemble
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        x, y = torch.randn(8, 4), torch.randint(3, (8,))
        guide = AutoDeltaEnsemble(model, num_members=4)
        with guide.member(2):
            latents = guide(x, y)               # member 2's point estimate
        values = guide.member_values(2, x, y)   # the same, detached: {site: tensor}
        assert torch.equal(values["net.weight"], latents["net.weight"])
    """

    def __init__(
        self,
        model: Callable,
        num_members: int,
        init_loc_fn: InitLocFn | Sequence[InitLocFn] = init_to_sample,
        *,
        name: str = "AutoDeltaEnsemble",
    ) -> None:
        if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
            raise ValueError(f"num_members must be an integer >= 1, got {num_members!r}")
        inits = list(init_loc_fn) if isinstance(init_loc_fn, Sequence) else [init_loc_fn]
        if len(inits) not in (1, num_members):
            raise ValueError(
                f"give one init_loc_fn or one per member ({num_members}), got {len(inits)}"
            )
        inits = inits * num_members if len(inits) == 1 else inits
        super().__init__(name)
        self.num_members = num_members
        self.members = PyroModule[nn.ModuleList](
            [AutoDelta(model, init_loc_fn=init) for init in inits]
        )
        self._active: int | None = None

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The active member's latents, or a uniformly drawn member's outside :meth:`member`."""
        index = self._active
        if index is None:
            index = int(torch.randint(self.num_members, ()))
        return self.members[index](*args, **kwargs)

    @property
    def active_member(self) -> int | None:
        """The index of the member that :meth:`member` made the guide, ``None`` outside it (a
        compiled pass keys its graph on it: each member has its own parameters)."""
        return self._active

    @contextmanager
    def member(self, index: int) -> Iterator[AutoDelta]:
        """Make member ``index`` the guide inside the block."""
        if not 0 <= index < self.num_members:
            raise IndexError(f"member {index} out of range for {self.num_members} members")
        previous, self._active = self._active, index
        try:
            yield self.members[index]
        finally:
            self._active = previous

    @torch.no_grad()
    def member_values(self, index: int, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Member ``index``'s latent values (the point estimate), detached."""
        return self.members[index].median(*args, **kwargs)


class EnsembleELBO(WrapperELBO):
    """Train every member of an :class:`AutoDeltaEnsemble` at each step with a plain ELBO.

    The loss is the sum of the members' losses, one trace per member: a deep ensemble, the
    baseline of OT-MDR's uniform-mixture setting. For any other guide it is the wrapped ELBO.
    A jit ELBO is compiled once per member (a copy of it for each, by ``active_member``): Pyro's
    jit ELBO keeps one compiled graph per number of arguments, with the parameters of the guide
    it first saw, so one copy for all members would train the first member M times.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro_otmdr import AutoDeltaEnsemble, EnsembleELBO
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        optim = pyro.optim.Adam({"lr": 1e-3})
        svi = SVI(model, AutoDeltaEnsemble(model, 5), optim, loss=EnsembleELBO(Trace_ELBO()))
        loss = svi.step(torch.randn(8, 4), torch.randint(3, (8,)))  # the sum over the 5 members
    """

    accepts_jit = True

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return over_members(guide, lambda: self.elbo.loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return self.per_member(
            guide,
            lambda: self._member_elbo(guide).loss_and_grads(model, guide, *args, **kwargs),
        )

    def _member_elbo(self, guide: Callable) -> ELBO:
        """The wrapped ELBO, or for a jit ELBO and an ensemble the active member's own copy."""
        if not isinstance(self.elbo, _JIT_ELBOS) or not is_ensemble(guide):
            return self.elbo
        if not hasattr(guide, "active_member"):
            raise TypeError(
                f"EnsembleELBO compiles a jit ELBO once per member, but the ensemble guide "
                f"{type(guide).__name__} has no active_member property to tell them apart: add "
                "one, or wrap the non-jit ELBO"
            )
        copies = self.__dict__.setdefault("_member_elbos", {})
        index = guide.active_member
        if index not in copies:
            elbo = copy.copy(self.elbo)
            for compiled in ("_loss_and_surrogate_loss", "_differentiable_loss"):
                vars(elbo).pop(compiled, None)  # its own compiled graph, built on first use
            copies[index] = elbo
        return copies[index]
