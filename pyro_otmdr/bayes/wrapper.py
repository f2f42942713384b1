"""The base of every ELBO that wraps another: delegation, ensemble members, nested state.

:class:`~pyro_otmdr.EnsembleELBO` (every member of an ensemble), the model-space
:class:`~pyro_otmdr.OTMDR` and :class:`~pyro_otmdr.SAM` and the data-space losses
(:class:`~pyro_otmdr.TRADES`, ...) all wrap a Pyro ELBO and stack (``OTMDR(TRADES(Trace_ELBO()))``).
:class:`WrapperELBO` does once what each of them needs:

* refuse what cannot be wrapped (not an ELBO, a jit ELBO it does not compile itself:
  :func:`check_wrappable`);
* delegate ``loss``, ``differentiable_loss`` and Pyro's ``_get_trace`` to the inner ELBO, and
  give the inner ELBO's uncompiled counterpart (:attr:`~WrapperELBO.uncompiled`): a wrapper that
  compiles its passes itself (``OTMDR(JitTrace_ELBO())``) runs the ``Trace_ELBO`` of the same
  settings inside its own compiled graph;
* run a loss once per member of an ensemble guide (:meth:`~WrapperELBO.per_member`), the one
  definition of an ensemble being :func:`~pyro_otmdr.bayes.members.is_ensemble`;
* nest ``state_dict``/``load_state_dict``: a wrapper's own state, with the inner ELBO's under
  ``"elbo"`` when it has one, so one call saves the whole stack.

:class:`PreparesStep` is the typed contract of a loss that prepares each step's batch once
(a data-robust loss attacks there) before a sharpness-aware step's passes.

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoDelta
    from pyro_otmdr.bayes import WrapperELBO, bayesian

    class Doubled(WrapperELBO):
        def loss_and_grads(self, model, guide, *args, **kwargs):
            return self.per_member(guide, lambda: 2 * self.elbo.loss_and_grads(
                model, guide, *args, **kwargs))

    model = bayesian(torch.nn.Linear(4, 3), num_data=8)
    svi = SVI(model, AutoDelta(model), pyro.optim.Adam({"lr": 1e-3}), loss=Doubled(Trace_ELBO()))
    loss = svi.step(torch.randn(8, 4), torch.randint(3, (8,)))
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol, runtime_checkable

from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)

from .members import is_ensemble, sum_over_members

__all__ = ["COMPILED_ELBOS", "PreparesStep", "WrapperELBO", "check_wrappable", "uncompiled"]

_JIT_ELBOS = (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO)

COMPILED_ELBOS: dict[type[ELBO], type[ELBO]] = {
    JitTraceMeanField_ELBO: TraceMeanField_ELBO,
    JitTrace_ELBO: Trace_ELBO,
}
"""The jit ELBOs that a sharpness-aware step compiles itself, each with the ELBO it compiles
(:mod:`pyro_otmdr.model_space.jit`)."""

#: The key of the inner ELBO's state in a wrapper's ``state_dict``.
INNER = "elbo"


def check_wrappable(wrapper: str, elbo: Any, *, jit: bool | Collection[type[ELBO]] = False) -> None:
    """``TypeError`` unless ``elbo`` is a :class:`pyro.infer.ELBO`, and not a jit one unless
    ``jit`` allows it: ``True`` any, a collection of jit ELBO classes those (the ones a wrapper
    compiles itself: :data:`COMPILED_ELBOS`), ``False`` none. Pyro's jit ELBOs compile the loss
    once per number of arguments and bake the guide's noise into the graph, but ``wrapper``
    evaluates it on batches of several shapes with the noise fixed per step."""
    if not isinstance(elbo, ELBO):
        raise TypeError(
            f"{wrapper} expects a pyro.infer.ELBO to wrap (e.g. Trace_ELBO()), got "
            f"{type(elbo).__name__}"
        )
    if jit is True or not isinstance(elbo, _JIT_ELBOS):
        return
    allowed = tuple(jit or ())
    if isinstance(elbo, allowed):
        return
    plain = type(elbo).__name__.removeprefix("Jit")
    if allowed:
        names = " and ".join(sorted(t.__name__ for t in allowed))
        raise TypeError(
            f"{wrapper} compiles its passes for {names} only; {type(elbo).__name__} is not "
            f"one of them: wrap the non-jit version ({plain}) instead"
        )
    raise TypeError(
        f"{type(elbo).__name__} compiles the loss once for one batch shape and bakes the "
        f"guide's noise into the compiled graph, but {wrapper} evaluates it on several "
        f"batches with the noise fixed per step: wrap the non-jit version ({plain}) instead"
    )


def uncompiled(elbo: ELBO) -> ELBO:
    """``elbo`` itself, or for a jit ELBO of :data:`COMPILED_ELBOS` the ELBO it compiles, with
    the same settings: a view that shares its attributes (``num_particles``,
    ``max_plate_nesting`` as guessed, ...), so that a wrapper can run its passes inside a
    compiled graph of its own.

    Usage::

        from pyro.infer import JitTrace_ELBO, Trace_ELBO
        from pyro_otmdr.bayes.wrapper import uncompiled

        elbo = JitTrace_ELBO(num_particles=3)
        plain = uncompiled(elbo)
        assert type(plain) is Trace_ELBO and plain.num_particles == 3
        elbo.max_plate_nesting = 1                # one set of settings for both
        assert plain.max_plate_nesting == 1
        assert uncompiled(plain) is plain
    """
    for jit_type, plain in COMPILED_ELBOS.items():
        if isinstance(elbo, jit_type):
            view = object.__new__(plain)
            view.__dict__ = elbo.__dict__
            return view
    return elbo


@runtime_checkable
class PreparesStep(Protocol):
    """A loss that prepares each step's batch once, at the unperturbed parameters.

    A sharpness-aware step calls ``prepare_step`` before its passes and runs every pass on what
    it returns; ``per_example_mean`` says whether a batch's loss is a mean over its examples
    (what lets two halves average to the whole batch).

    What a loss prepares travels with the batch: ``prepare_step`` returns the arguments with
    keyword arguments of its own added, tensors whose leading dimension is the batch's (a
    data-robust loss adds its adversarial inputs under
    ``pyro_otmdr.data_space.elbo.PREPARED_KEY``). The step splits every tensor argument row for
    row, so each half batch carries its own rows, and hands them back to the loss, which removes
    its keywords before the model sees the arguments. The step never reads them.
    """

    @property
    def per_example_mean(self) -> bool: ...

    def prepare_step(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]: ...


class WrapperELBO(ELBO):
    """An ELBO around another ELBO (``self.elbo``); see the module docstring.

    Subclasses implement ``loss_and_grads`` and, when they have a state of their own,
    :meth:`own_state_dict` and :meth:`load_own_state_dict`. ``accepts_jit`` (``False``): whether
    a jit ELBO may be wrapped (``True``: any; a tuple of classes: those, e.g. the keys of
    :data:`COMPILED_ELBOS` for a wrapper that runs :attr:`uncompiled` in its own compiled
    graph).
    """

    accepts_jit: bool | tuple[type[ELBO], ...] = False

    def __init__(self, elbo: ELBO) -> None:
        check_wrappable(type(self).__name__, elbo, jit=self.accepts_jit)
        super().__init__()
        self.elbo = elbo

    @property
    def uncompiled(self) -> ELBO:
        """The inner ELBO, or for a jit ELBO of :data:`COMPILED_ELBOS` the ELBO it compiles,
        with the same settings (:func:`uncompiled`): what to run inside a compiled graph."""
        return uncompiled(self.elbo)

    # -- delegation ------------------------------------------------------------------------------

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The wrapped ELBO's loss at the current parameters."""
        return self.elbo.loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """The wrapped ELBO's differentiable loss at the current parameters."""
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        return self.elbo._get_trace(model, guide, args, kwargs)

    @staticmethod
    def per_member(guide: Callable, loss_and_grads: Callable[[], Any]) -> Any:
        """``loss_and_grads()`` for one guide; for an ensemble, once per member with clean
        gradients for each (:func:`~pyro_otmdr.bayes.ensemble.sum_over_members`), summed."""
        if not is_ensemble(guide):
            return loss_and_grads()
        return sum_over_members(guide, lambda: float(loss_and_grads()))

    # -- state -----------------------------------------------------------------------------------

    def own_state_dict(self) -> dict[str, Any]:
        """This wrapper's own state (none by default)."""
        return {}

    def load_own_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`own_state_dict` returned."""

    def state_dict(self) -> dict[str, Any]:
        """The whole stack's state: this wrapper's own, and the inner ELBO's under ``"elbo"``
        when it has one."""
        state = dict(self.own_state_dict())
        if hasattr(self.elbo, "state_dict"):
            inner = self.elbo.state_dict()
            if inner:
                state[INNER] = inner
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a state saved before the nesting, without
        ``"elbo"``, restores this wrapper only)."""
        self.load_own_state_dict({k: v for k, v in state.items() if k != INNER})
        if INNER in state and hasattr(self.elbo, "load_state_dict"):
            self.elbo.load_state_dict(state[INNER])
