"""Compiled passes: OT-MDR and SAM over Pyro's ``JitTrace_ELBO`` and ``JitTraceMeanField_ELBO``.

Pyro's jit ELBOs compile the loss once per number of arguments (``pyro.ops.jit.CompiledFunction``
keys its cache on ``len(args)`` and the keyword arguments' values, not on the tensors' shapes)
and trace whatever the guide draws inside the graph: a batch's size (the plate's ``N / |b|``)
and a Gaussian guide's noise would be frozen into it. A sharpness-aware step evaluates the loss
on batches of two sizes (the halves, the whole batch) with the noise fixed for the whole step,
so :class:`CompiledPasses` compiles the passes itself, with ``torch.jit.trace``:

* **one graph per kind of pass and batch shape.** The cache key is the model and guide (by
  identity), the ensemble member that is the guide (``active_member``), and each argument:
  a tensor by shape, dtype, device and ``requires_grad``, anything else by value. Within a key,
  one graph per pattern of ``requires_grad`` of the parameters (a pass in which the step makes
  the fixed parameters constants is its own graph). An even batch of ``B`` gives two keys
  (``B / 2``: both halves, ``B``: the whole batch); an odd one three.
* **inputs, not constants.** The graph's inputs are the parameters' unconstrained leaves (as
  Pyro's jit passes them: the tensors the step moves in place, so every pass reads the
  parameters as they are, perturbed or not), each Gaussian guide site's noise ``kappa`` for the
  pass (and the constant of its closed-form log-density), in a pass whose fixed parameters are
  constants the values the step serves for them (:class:`~.constant_params.ConstantParams`:
  a scale's softplus is not recomputed), and every tensor argument of the batch.
  The step's handler (:class:`~.reparam_noise.FixedReparamNoise`) draws the noise before the graph
  runs, in the order the guide samples, and the graph serves it to the guide
  (:meth:`~.reparam_noise.FixedReparamNoise.given`).
* **compiling starts from the uncompiled pass.** The first pass of a key runs uncompiled, as
  the step without jit would run it (it draws the noise, validates), and records what the graph
  needs: the parameters it read, the noise sites it asked for and the plates' random subsamples,
  in the order it drew them, what Pyro's plates said (:class:`~.subsampling.PlateScaling`) and
  the normalisation layers it ran (a pass that creates parameters, the guide's first call, is
  not what later passes do: the next pass of its key records instead). The next pass of the key
  traces the graph from its own inputs, with the global random state, the running statistics
  and every handler outside it left as they were. An epoch's last, smaller batch is a new shape:
  its passes compile once more (their first pass uncompiled), and are served compiled in later
  epochs. Past ``max_shapes`` shapes, new ones run uncompiled, with one warning.
* **the random draws in the uncompiled order.** Before a graph runs, its pass's noise and its
  plates' subsamples are drawn in the order the uncompiled pass draws them (an amortised guide's
  plate draws its subsample before the noise of the sites in it), and the subsamples are inputs
  too: compiled and uncompiled steps take the same values from the global random state, step
  after step (a graph would otherwise draw a subsample after the noise, or drop a draw that no
  output needs).
* **what a graph does not do by itself** is done around it: a step's first pass announces the
  parameters to Pyro (``pyro.param``, so that ``SVI`` and the ensemble see them, and a
  parameter store cleared since then compiles afresh), hands over what the plates said,
  tells the running-statistics guard which layers run (:func:`~.running_stats.ran_compiled`)
  and counts a batch-norm layer's batches.

The graph computes what the uncompiled ELBO computes (:func:`differentiable_pass`: the same
traces, the same sums), so every loss and gradient equals the uncompiled step's up to the
rounding of the compiled kernels. A model the trace cannot follow (Python control flow on a
tensor's value, a number of sample sites that depends on the data) is refused with
:class:`JitTraceError`: when it is compiled, for a tracer's warning that a tensor of the user's
code became a Python value (unless the jit ELBO was built with ``ignore_jit_warnings=True``, for
a value that never changes, such as a shape check), and when a graph is first reused on new
data, if it disagrees with its function run on the same inputs (other sample sites, parameters
or plates, or another loss).

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr import OTMDR
    from pyro_otmdr.bayes import bayesian

    x, y = torch.randn(16, 4), torch.randint(3, (16,))
    losses = {}
    for elbo in (Trace_ELBO(), JitTrace_ELBO()):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = bayesian(torch.nn.Linear(4, 3), num_data=16)
        loss = OTMDR(elbo, rho=0.05, seed=0)
        svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 1e-2}), loss=loss)
        losses[type(elbo).__name__] = torch.tensor([svi.step(x, y) for _ in range(3)])
    assert torch.allclose(losses["JitTrace_ELBO"], losses["Trace_ELBO"], rtol=1e-5)
    assert loss.compiled.compilations == 3   # halves and whole batch; a first pass with the scales
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from ..bayes.members import is_ensemble
from ..bayes.wrapper import COMPILED_ELBOS, WrapperELBO
from .constant_params import ConstantParams
from .device_loss import _reparameterised_surrogate
from .reparam_noise import FixedReparamNoise, NoiseSite
from .running_stats import RunningStatsGuard, ran_compiled
from .subsampling import PlateScaling

__all__ = [
    "MAX_SHAPES",
    "CompiledPasses",
    "JitTraceError",
    "compiled_elbo",
    "differentiable_pass",
]

_FROZEN_VALUES = ("Converting a tensor to a Python", "Iterating over a tensor")
"""Tracer warnings that a value became a constant of the graph (control flow on a value)."""

_LIBRARIES = tuple(
    os.path.join(Path(path).resolve().parent, "")
    for path in (torch.__file__, pyro.__file__, Path(__file__).parent)
)
"""Where the tracer's warnings are about library code (torch, Pyro, this package), not the
user's model."""

MAX_SHAPES = 16
"""How many batch shapes (keys, an ensemble's members counted once) a step compiles before
passes of new ones run uncompiled."""

PassFunction = Callable[[Callable, Callable, tuple, dict], torch.Tensor]
"""``pass_fn(model, guide, args, kwargs) -> loss``: one uncompiled pass, a differentiable loss."""


class JitTraceError(TypeError):
    """A model or guide that a compiled pass cannot trace faithfully."""


def compiled_elbo(elbo: ELBO) -> ELBO | None:
    """The jit ELBO of :data:`~pyro_otmdr.bayes.wrapper.COMPILED_ELBOS` innermost in a stack
    of wrappers (``OTMDR(TRADES(JitTrace_ELBO()))``), or ``None``.

    Usage::

        from pyro.infer import JitTrace_ELBO, Trace_ELBO
        from pyro_otmdr.model_space.jit import compiled_elbo

        jit = JitTrace_ELBO()
        assert compiled_elbo(jit) is jit and compiled_elbo(Trace_ELBO()) is None
    """
    while isinstance(elbo, WrapperELBO):
        elbo = elbo.elbo
    return elbo if isinstance(elbo, tuple(COMPILED_ELBOS)) else None


def differentiable_pass(
    elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> torch.Tensor:
    """One pass of an uncompiled ELBO as a differentiable loss, in tensors only: nothing that a
    trace would freeze (no float conversion, no check of the value).

    ``Trace_ELBO``: the sum over particles of what its ``loss_and_grads`` backpropagates (the
    surrogate, which is the loss for a reparameterised guide); ``TraceMeanField_ELBO``: its
    ``differentiable_loss``; a wrapper (a data-robust loss around the uncompiled ELBO): its own
    ``differentiable_loss``.

    Usage::

        import math
        import torch
        from pyro.infer import Trace_ELBO
        from pyro.infer.autoguide import AutoDelta
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.model_space.jit import differentiable_pass

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        guide, x, y = AutoDelta(model), torch.randn(8, 4), torch.randint(3, (8,))
        loss = differentiable_pass(Trace_ELBO(), model, guide, (x, y), {})
        assert loss.requires_grad
        assert math.isclose(loss.item(), Trace_ELBO().loss(model, guide, x, y), rel_tol=1e-5)
    """
    if isinstance(elbo, WrapperELBO):
        return elbo.differentiable_loss(model, guide, *args, **kwargs)
    if isinstance(elbo, TraceMeanField_ELBO):
        particle_loss = lambda m, g: elbo._differentiable_loss_particle(m, g)[1]  # noqa: E731
    elif isinstance(elbo, Trace_ELBO):
        particle_loss = _trace_particle_loss
    else:
        raise TypeError(
            f"a compiled pass runs Trace_ELBO or TraceMeanField_ELBO, got {type(elbo).__name__}"
        )
    loss: torch.Tensor | float = 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        loss = loss + particle_loss(model_trace, guide_trace) / elbo.num_particles
    if not isinstance(loss, torch.Tensor):
        loss = torch.tensor(float(loss))
    return loss


def _trace_particle_loss(model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
    """A ``Trace_ELBO`` particle's loss carrying its surrogate's gradient, in tensors."""
    surrogate = _reparameterised_surrogate(model_trace, guide_trace)
    if surrogate is not None:
        return surrogate
    elbo: torch.Tensor | float = 0.0
    surrogate_elbo: torch.Tensor | float = 0.0
    log_r = None
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            elbo = elbo + site["log_prob_sum"]
            surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        _, score_function_term, entropy_term = site["score_parts"]
        elbo = elbo - site["log_prob_sum"]
        if not is_identically_zero(entropy_term):
            surrogate_elbo = surrogate_elbo - entropy_term.sum()
        if not is_identically_zero(score_function_term):
            if log_r is None:
                log_r = _compute_log_r(model_trace, guide_trace)
            term = log_r.sum_to(site["cond_indep_stack"])
            surrogate_elbo = surrogate_elbo + (term * score_function_term).sum()
    surrogate = torch.as_tensor(-surrogate_elbo)
    return surrogate + (torch.as_tensor(-elbo) - surrogate).detach()


@dataclass
class _Compiled:
    """What a key's graphs need, recorded by the key's first (uncompiled) pass."""

    names: list[str]  # the param sites, announced at a step's first pass (leaves[:len(names)])
    leaves: list[torch.Tensor]  # the parameters' unconstrained leaves, the first inputs
    noise: list[NoiseSite]  # then each site's noise (and constant)
    draws: list[NoiseSite | _SubsampleDraw]  # the pass's random draws, in order (then subsamples)
    slots: list[int | str]  # then the batch's tensors: their positions and keywords
    template: tuple[tuple, dict]  # the arguments, their tensors left out
    scaling: PlateScaling  # what the plates said
    norms: list[nn.Module]  # the normalisation layers the pass ran
    graphs: dict[tuple[bool, ...], Callable] = field(default_factory=dict)
    # until checked: each graph's function and the batch it was traced on
    bodies: dict[tuple[bool, ...], tuple[Callable, list]] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)  # what the tracer said it froze


class CompiledPasses:
    """The compiled passes of a sharpness-aware step, one graph per kind of pass and shape.

    :param elbo: the jit ELBO whose passes are compiled: its ``jit_options`` go to
        ``torch.jit.trace`` (``check_trace`` off unless given, as in Pyro) and its
        ``ignore_jit_warnings`` turns the check of the tracer's warnings off.
    :param max_shapes: how many batch shapes to compile; passes of further ones run
        uncompiled.

    ``compilations`` counts the graphs traced, ``uncompiled_passes`` the passes that ran without
    one (each key's first, and those past ``max_shapes``).
    """

    def __init__(self, elbo: ELBO, *, max_shapes: int = MAX_SHAPES) -> None:
        self.jit_options = dict(getattr(elbo, "jit_options", None) or {})
        self.jit_options.setdefault("check_trace", False)
        self.ignore_warnings = bool(getattr(elbo, "ignore_jit_warnings", False))
        self.plain_name = next(
            (plain.__name__ for jit, plain in COMPILED_ELBOS.items() if isinstance(elbo, jit)),
            "the uncompiled ELBO",
        )
        self.max_shapes = max_shapes
        self.compilations = 0
        self.uncompiled_passes = 0
        self._entries: dict[Hashable, _Compiled] = {}
        self._warned = False

    def clear(self) -> None:
        """Forget every graph (the next pass of each shape compiles afresh)."""
        self._entries.clear()

    def loss(
        self,
        pass_fn: PassFunction,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        *,
        noise: FixedReparamNoise,
        pass_guide: Callable | None = None,
        announce: bool = False,
        scaling: PlateScaling | None = None,
        extra_leaves: Sequence[torch.Tensor] = (),
        constants: ConstantParams | None = None,
    ) -> torch.Tensor:
        """One pass's differentiable loss, from its compiled graph (compiled now if new).

        :param pass_fn: the uncompiled pass, ``pass_fn(model, guide, args, kwargs)``.
        :param guide: the guide itself (the graph serves it its noise).
        :param noise: the step's noise handler, at the pass's rows.
        :param pass_guide: the guide an uncompiled pass runs (``noise(guide)`` when the handler
            is not active around the pass); ``guide`` when omitted.
        :param announce: the step's first pass: ``pyro.param`` each parameter, so that the
            handlers around the step see them (and check they are the graph's).
        :param scaling: the step's first pass's plate watcher, to hand over what the plates said.
        :param extra_leaves: tensors to pass as inputs too (an optimiser's parameters).
        :param constants: the step's served constants (the ``served_constants`` saving): a
            parameter it serves is an input of the graph as its served value, so the graph does
            not recompute it (a scale's softplus).
        """
        pass_guide = guide if pass_guide is None else pass_guide
        key, tensors = _key(model, guide, args, kwargs)
        entry = self._entries.get(key)
        if entry is not None and announce and not _announce(entry):
            self.clear()  # the parameter store changed under the graphs
            entry = None
        if entry is None:
            shapes = {k[:2] + k[3:] for k in self._entries}  # an ensemble's members: one shape
            if key[:2] + key[3:] not in shapes and len(shapes) >= self.max_shapes:
                self._warn_uncompiled()
                self.uncompiled_passes += 1
                return pass_fn(model, pass_guide, args, kwargs)
            store = set(pyro.get_param_store().keys())
            loss, entry = self._record(pass_fn, model, pass_guide, args, kwargs, noise)
            if not set(pyro.get_param_store().keys()) <= store:
                return loss  # a first call that set the guide up: not what later passes do
            for leaf in extra_leaves:
                if not any(leaf is seen for seen in entry.leaves):
                    entry.leaves.append(leaf)
            self._entries[key] = entry  # traced at its next pass: this one's backward is pending
            return loss
        served = _served(entry, constants)
        inputs = [*entry.leaves, *served.values(), *_draw(entry, noise), *tensors]
        graph = self._graph(entry, pass_fn, model, guide, noise, inputs, served)
        ran_compiled(entry.norms)
        expected = None
        pattern = _pattern(entry, served)
        pending = entry.bodies.get(pattern)
        if pending is not None and not _same_batch(pending[1], tensors):  # new data: check
            del entry.bodies[pattern]
            expected = self._eager(pending[0], inputs)
        outputs = graph(*inputs)
        _count_batches(entry.norms)
        if expected is not None:
            self._check(entry, outputs, *expected)
        if scaling is not None:
            scaling.update(entry.scaling)
        return outputs[0]

    # -- compiling -------------------------------------------------------------------------------

    def _record(
        self,
        pass_fn: PassFunction,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        noise: FixedReparamNoise,
    ) -> tuple[torch.Tensor, _Compiled]:
        """The key's first pass, uncompiled, and what its graphs need."""
        sizes = [v.shape[0] for v in (*args, *kwargs.values()) if _batched(v)]
        facts = PlateScaling(sizes[0] if sizes else -1)
        draws: list[NoiseSite | _SubsampleDraw] = []
        with (
            poutine.trace(param_only=True) as seen,
            noise.recording(draws) as sites,
            _subsamples(record=draws),
            facts,
            _norms_seen() as norms,
        ):
            loss = pass_fn(model, guide, args, kwargs)
        self.uncompiled_passes += 1
        names, leaves = [], []
        for name, site in seen.trace.nodes.items():
            leaf = site["value"].unconstrained()
            if not any(leaf is other for other in leaves):
                names.append(name)
                leaves.append(leaf)
        slots = [slot for slot, _ in _tensor_slots(args, kwargs)]
        template = (
            tuple(None if isinstance(v, torch.Tensor) else v for v in args),
            {k: None if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
        )
        entry = _Compiled(names, leaves, list(sites.values()), draws, slots, template, facts, norms)
        return loss, entry

    def _graph(
        self,
        entry: _Compiled,
        pass_fn: PassFunction,
        model: Callable,
        guide: Callable,
        noise: FixedReparamNoise,
        inputs: list[torch.Tensor],
        served: dict[str, torch.Tensor],
    ) -> Callable:
        """The entry's graph for its parameters' current ``requires_grad`` and served values,
        traced (on this pass's ``inputs``) if new."""
        pattern = _pattern(entry, served)
        graph = entry.graphs.get(pattern)
        if graph is not None:
            return graph
        body = _body(entry, pass_fn, model, guide, noise.closed_form_logq, list(served))
        tensors = inputs[len(inputs) - len(entry.slots) :]
        inputs = tuple(inputs)
        with _isolated(inputs), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            # Pyro's jit ELBOs trace too; torch.compile cannot take Pyro's handlers as inputs
            warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated", DeprecationWarning)
            try:
                graph = torch.jit.trace(body, inputs, **self.jit_options)
            except Exception as error:
                raise self._error(f"tracing it failed ({type(error).__name__}: {error})") from error
        for w in caught:  # the tracer's warnings about the user's code; others pass on
            if not issubclass(w.category, torch.jit.TracerWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            if str(Path(w.filename).resolve()).startswith(_LIBRARIES):
                continue  # the libraries' own (shape checks, constants): the key fixes shapes
            said = f"{w.filename}:{w.lineno}: {str(w.message).split('. ')[0]}"
            if said not in entry.frozen:
                entry.frozen.append(said)
            if not self.ignore_warnings and any(t in str(w.message) for t in _FROZEN_VALUES):
                raise self._error(f"the trace froze a value of a tensor at {said}")
        entry.graphs[pattern] = graph
        entry.bodies[pattern] = (body, [weakref.ref(t) for t in tensors])
        self.compilations += 1
        return graph

    @staticmethod
    def _eager(body: Callable, inputs: list[torch.Tensor]) -> tuple[tuple, dict, list, bool]:
        """What the graph should give: its function run eagerly on the same inputs, leaving no
        trace (no gradient, the random state and running statistics as they were)."""
        probe: dict[str, Any] = {}
        with _isolated(inputs), torch.no_grad():
            outputs = body(*inputs, _probe=probe)
        return outputs, probe["noise"], probe["leaves"], bool(probe["subsamples"])

    def _check(
        self,
        entry: _Compiled,
        outputs: tuple,
        expected: tuple,
        noise: dict[str, torch.Tensor],
        leaves: list[torch.Tensor],
        subsamples_left: bool,
    ) -> None:
        """The first reuse of a graph, on new data, against its function run eagerly: the same
        sample sites, parameters and plates, and the same loss up to rounding."""
        why = None
        if list(noise) != [site.name for site in entry.noise]:
            why = f"its guide sampled {sorted(noise)} where it had sampled "
            why += f"{[site.name for site in entry.noise]}"
        elif any(not any(leaf is known for known in entry.leaves) for leaf in leaves):
            why = "it read parameters that its first pass did not read"
        elif subsamples_left:
            why = "it entered fewer plates than its first pass"
        else:
            got, want = outputs[0].detach(), expected[0]
            # a changed branch, not rounding: 1.2e-4 relative in float32, 1e-6 in float64
            tolerance = max(1e3 * torch.finfo(want.dtype).eps, 1e-6) * (1.0 + want.abs())
            if not bool((got - want).abs() <= tolerance):
                why = f"the compiled graph gives the loss {got.item():.8g} where the model "
                why += f"gives {want.item():.8g} on the same inputs"
        if why is not None:
            if entry.frozen:
                why += "; the tracer warned about your code at " + "; ".join(entry.frozen)
            raise self._error(why)

    def _error(self, why: str) -> JitTraceError:
        return JitTraceError(
            f"this model and guide cannot be compiled: {why}. A compiled pass needs a static "
            "model: the same sample sites and the same operations for every batch of a "
            f"shape, with no Python control flow on a tensor's value; use the uncompiled ELBO "
            f"({self.plain_name}) instead (or, for a value that never changes, such as a shape "
            "check, build the jit ELBO with ignore_jit_warnings=True)"
        )

    def _warn_uncompiled(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"more than {self.max_shapes} batch shapes: passes of new shapes run "
                "uncompiled (give the batches fewer shapes, e.g. drop_last=True)",
                RuntimeWarning,
                stacklevel=4,
            )


def _body(
    entry: _Compiled,
    pass_fn: PassFunction,
    model: Callable,
    guide: Callable,
    closed_form: bool,
    served_names: list[str],
) -> Callable:
    """The function a graph traces: inputs in (the leaves, the served values, the noise, the
    plates' subsamples, the batch), the loss out."""
    n_leaves = len(entry.leaves)

    def body(*inputs: torch.Tensor, _probe: dict | None = None) -> tuple[torch.Tensor, ...]:
        served = dict(zip(served_names, inputs[n_leaves:], strict=False))
        kappas, constants, i = {}, {}, n_leaves + len(served_names)
        for site in entry.noise:
            kappas[site.name] = inputs[i]
            i += 1
            if site.constant:
                constants[site.name] = inputs[i]
                i += 1
        n_subsamples = sum(isinstance(d, _SubsampleDraw) for d in entry.draws)
        subsamples, i = list(inputs[i : i + n_subsamples]), i + n_subsamples
        args, kwargs = list(entry.template[0]), dict(entry.template[1])
        for slot, tensor in zip(entry.slots, inputs[i:], strict=True):
            if isinstance(slot, int):
                args[slot] = tensor
            else:
                kwargs[slot] = tensor
        given = FixedReparamNoise.given(kappas, constants, closed_form)
        with (
            poutine.block(),
            pyro.validation_enabled(False),
            _subsamples(given=subsamples),
            poutine.trace(param_only=True) as seen,
            _Serve(served),
        ):
            loss = pass_fn(model, given(guide), tuple(args), kwargs)
        if _probe is not None:  # the check: the sites the guide sampled, the parameters read
            _probe["noise"] = dict(given.noise)
            _probe["leaves"] = [site["value"].unconstrained() for site in seen.trace.nodes.values()]
            _probe["subsamples"] = subsamples  # what is left: the plates it did not enter
        return (loss,)

    return body


@contextmanager
def _isolated(inputs: Sequence[torch.Tensor]) -> Iterator[None]:
    """A run that leaves nothing behind: the global random state (CPU and the inputs' GPUs) and
    the running statistics as they were, and no handler outside it sees a message."""
    devices = sorted({t.device.index or 0 for t in inputs if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), RunningStatsGuard(), poutine.block():
        yield


def _same_batch(refs: list, tensors: list[torch.Tensor]) -> bool:
    """Whether ``tensors`` are the very tensors a graph was traced on (no new data to check)."""
    return len(refs) == len(tensors) and all(r() is t for r, t in zip(refs, tensors, strict=True))


def _pattern(entry: _Compiled, served: dict[str, torch.Tensor]) -> Hashable:
    return tuple(leaf.requires_grad for leaf in entry.leaves), tuple(served)


def _served(entry: _Compiled, constants: ConstantParams | None) -> dict[str, torch.Tensor]:
    """The values ``constants`` serves now for the entry's parameters, by name."""
    if constants is None:
        return {}
    found = {name: constants.served(name) for name in entry.names}
    return {name: value for name, value in found.items() if value is not None}


def _key(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Hashable, list]:
    """The cache key of a pass and its tensor arguments, in the order of the graph's inputs."""
    parts: list[Hashable] = []
    for slot, value in [*enumerate(args), *sorted(kwargs.items())]:
        if isinstance(value, torch.Tensor):
            parts.append((slot, tuple(value.shape), value.dtype, value.device, value.requires_grad))
        else:
            parts.append((slot, _hashable(value)))
    tensors = [tensor for _, tensor in _tensor_slots(args, kwargs)]
    return (id(model), id(guide), _member(guide), tuple(parts)), tensors


def _tensor_slots(args: tuple, kwargs: dict) -> list[tuple[int | str, torch.Tensor]]:
    """The batch's tensors with their positions and keywords (keywords sorted by name)."""
    slots: list[tuple[int | str, torch.Tensor]] = [
        (i, v) for i, v in enumerate(args) if isinstance(v, torch.Tensor)
    ]
    slots += [(k, v) for k, v in sorted(kwargs.items()) if isinstance(v, torch.Tensor)]
    return slots


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
        return value
    except TypeError:
        if isinstance(value, list | tuple):
            return tuple(_hashable(v) for v in value)
        if isinstance(value, dict):
            return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
        return ("id", id(value))


def _member(guide: Callable) -> Hashable:
    """The ensemble member that is the guide now (each has its own parameters and graphs)."""
    if not is_ensemble(guide):
        return None
    if not hasattr(guide, "active_member"):
        raise JitTraceError(
            f"the ensemble guide {type(guide).__name__} has no active_member property: a "
            "compiled pass keys its graph on the member (each has its own parameters); add "
            "one, or use the uncompiled ELBO"
        )
    return guide.active_member


def _announce(entry: _Compiled) -> bool:
    """``pyro.param`` each of the graph's parameter sites; whether they are still its leaves."""
    for name, leaf in zip(entry.names, entry.leaves, strict=False):
        try:
            value = pyro.param(name)
        except KeyError:
            return False
        if value.unconstrained() is not leaf:
            return False
    return True


def _draw(entry: _Compiled, noise: FixedReparamNoise) -> list[torch.Tensor]:
    """The pass's random inputs, drawn in the order the uncompiled pass draws them (so both
    take the same values from the global random state): each site's noise (and constant),
    then the plates' subsamples."""
    kappas: dict[str, list[torch.Tensor]] = {}
    subsamples = []
    for draw in entry.draws:
        if isinstance(draw, _SubsampleDraw):
            subsamples.append(draw.draw())
        else:
            kappa, constant = noise.noise_of(draw)
            kappas[draw.name] = [kappa] if constant is None else [kappa, constant]
    return [t for site in entry.noise for t in kappas[site.name]] + subsamples


def _batched(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1


def _count_batches(norms: Sequence[nn.Module]) -> None:
    """What a batch-norm layer's ``forward`` does in Python and its graph does not: count the
    batch (its running mean and variance the graph updates itself, in place)."""
    with torch.no_grad():
        for module in norms:
            tracked = getattr(module, "num_batches_tracked", None)
            if module.training and module.track_running_stats and tracked is not None:
                tracked.add_(1)


@contextmanager
def _norms_seen() -> Iterator[list[nn.Module]]:
    """The normalisation layers whose ``forward`` runs within the block, in order."""
    seen: list[nn.Module] = []

    def hook(module: nn.Module, inputs: object) -> None:
        if isinstance(module, _NormBase) and not any(module is m for m in seen):
            if isinstance(module, _BatchNorm) and module.training and module.momentum is None:
                raise JitTraceError(
                    f"{type(module).__name__} with momentum=None (a cumulative average) reads "
                    "its batch count, which a compiled graph would freeze: give it a momentum, "
                    "or use the uncompiled ELBO"
                )
            seen.append(module)

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


class _Serve(Messenger):
    """Serve the graph's inputs as the values of the parameters they stand for."""

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_param(self, msg: dict) -> None:
        value = self.values.get(msg["name"])
        if value is not None and msg["value"] is None:
            msg["value"] = value


@dataclass(frozen=True)
class _SubsampleDraw:
    """A plate's random subsample, as the uncompiled pass draws it (``_Subsample.sample``)."""

    size: int
    subsample_size: int | None
    device: Any
    use_cuda: bool | None

    def draw(self) -> torch.Tensor:
        return _SAMPLE(_Subsample(self.size, self.subsample_size, self.use_cuda, self.device))


_SAMPLE = _Subsample.sample
_NO_SHAPE = torch.Size()


@contextmanager
def _subsamples(
    record: list | None = None, given: list[torch.Tensor] | None = None
) -> Iterator[None]:
    """Within the block, each plate's random subsample is recorded in ``record`` (in the order
    of the pass's draws) or taken from ``given`` (a graph's inputs, drawn before it runs in that
    order: a graph would otherwise draw them after the noise, or drop a draw that no output
    needs). Every plate's, also one a handler hides (a data-robust loss's clean pass):
    ``_Subsample.sample`` itself is wrapped while the block runs (one pass, one thread)."""

    def sample(self: _Subsample, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        if given is not None:
            if not given:
                raise JitTraceError(
                    "the pass entered a plate its first pass did not: a compiled pass needs "
                    "the same plates for every batch of a shape; use the uncompiled ELBO"
                )
            return given.pop(0)
        if record is not None:
            record.append(
                _SubsampleDraw(self.size, self.subsample_size, self.device, self.use_cuda)
            )
        return _SAMPLE(self, sample_shape)

    _Subsample.sample = sample
    try:
        yield
    finally:
        _Subsample.sample = _SAMPLE
