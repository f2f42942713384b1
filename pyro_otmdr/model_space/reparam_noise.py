"""An effect handler that fixes a guide's reparameterisation noise for a whole training step.

For each reparameterised Gaussian sample site of the guide, standard-normal noise ``kappa`` is drawn
the first time the site is sampled (from torch's global generator, as Pyro itself samples, so
``pyro.set_rng_seed`` governs it) and reused by every later pass under the same handler: the value
is ``loc + scale * kappa`` (``loc + scale_tril @ kappa`` for a multivariate normal,
``loc + W @ kappa_W + sqrt(D) * kappa_D`` for a low-rank one), so gradients still flow to ``loc``
and the spread. Sites whose value is already given (observed, replayed) are left alone; other
reparameterised distributions are refused with a clear error.

The handler replaces a site's distribution by one that draws its sample from the fixed noise
when Pyro samples it, after every plate has broadcast it. These distributions implement
``expand`` (torch's ``expand(batch_shape, _instance)`` contract), so a vectorising ELBO
(``Trace_ELBO(num_particles=K, vectorize_particles=True)``) broadcasts them over its particle
plate: the noise is drawn at the vectorised shape, one ``kappa`` per particle, fixed for the step.

**Local latent variables.** A guide site inside a plate over the batch (a VAE's ``z`` under
``pyro.plate("data", N, subsample_size=len(x))``, or ``pyro.plate("data", len(x))``) has one
entry per example along the plate's dim. The front end tells the handler the whole batch's size
(:meth:`FixedReparamNoise.for_batch`) and, for each pass, which rows of the whole batch it holds
(:meth:`FixedReparamNoise.on_rows`; the row numbers travel with the data and are split with it,
:func:`~pyro_otmdr.model_space.batching.with_rows`). Such a site's noise is one tensor for the
whole batch, the plate's dim of the whole batch's size; each example's entry is drawn once per
step (when a pass first holds it) and each pass gets the rows it holds: example ``i`` has the
same ``kappa_i`` in both halves, the whole batch and every particle's passes, so the halves'
losses still average to the whole batch's. A site whose shape changes with the batch outside
any plate over it is refused, with its name and what to write instead. A plate of the guide
that merely has a pass's size is told from the data plate after the step's first pass
(:meth:`FixedReparamNoise.settle`: the model's observed sites name the plates over the batch);
its sites keep the noise they drew, as global sites.

**Compiled passes.** A compiled pass (:mod:`.jit`) takes each site's noise as an input of its
graph instead of drawing it inside: the uncompiled pass that a key's compilation starts from
records what it asked of the handler (:meth:`FixedReparamNoise.recording`: one
:class:`NoiseSite` per site), every later pass asks the handler for the same sites' noise before
the graph runs (:meth:`FixedReparamNoise.noise_of`, drawn in the same order as the guide would
draw it), and inside the graph :meth:`FixedReparamNoise.given` serves those inputs.

Two log-densities at a site's own sample are known in closed form, and the handler returns them
without Pyro's entry-by-entry computation (any other value still gets Pyro's):

* a point mass: ``log 1`` plus its ``log_density``;
* a diagonal normal at ``loc + scale * kappa``: ``-kappa^2 / 2 - log(2 pi) / 2 - log(scale)``, whose
  first two terms are constant for the step (computed once). This is the same function of ``loc``
  and ``scale`` as ``Normal.log_prob`` at that sample, so the gradients are the same, up to
  rounding: its gradient is ``0`` for ``loc`` and ``-1 / scale`` for ``scale``, which the
  general formula reaches as a sum of terms that cancel.

Usage::

    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise

    model = bayesian(torch.nn.Linear(4, 3), num_data=16)
    guide, elbo = AutoNormal(model), Trace_ELBO()
    x, y = torch.randn(16, 4), torch.randint(3, (16,))
    fixed = FixedReparamNoise()
    loss_a = elbo.loss_and_grads(model, fixed(guide), x, y)            # draws kappa
    kappa = {name: noise.clone() for name, noise in fixed.noise.items()}
    loss_b = elbo.loss_and_grads(model, fixed(guide), x[:8], y[:8])    # same kappa
    assert set(kappa) == {"net.weight_unconstrained", "net.bias_unconstrained"}  # guide sites
    assert all(torch.equal(fixed.noise[name], kappa[name]) for name in kappa)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from pyro import distributions as dist
from pyro.infer import ELBO
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, MultivariateNormal, Normal, TransformedDistribution

from .subsampling import PARTICLE_PLATE

__all__ = ["FixedReparamNoise", "NoiseSite", "guess_plate_nesting"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_NO_SAMPLE_SHAPE = torch.Size()


@dataclass(frozen=True)
class NoiseSite:
    """What one pass asked of the handler for one guide site: enough to ask again.

    :ivar name: the site's name.
    :ivar frames: the plates it was sampled in (its ``cond_indep_stack``).
    :ivar event_dim: its number of event dimensions.
    :ivar shape: the shape of the noise it took.
    :ivar like: an empty tensor of the noise's dtype and device.
    :ivar constant: whether it took the constant of its closed-form log-density too.
    """

    name: str
    frames: tuple[CondIndepStackFrame, ...]
    event_dim: int
    shape: torch.Size
    like: torch.Tensor
    constant: bool


def guess_plate_nesting(
    elbo: Any, model: Callable, guide: Callable, args: tuple, kwargs: dict
) -> None:
    """Let a vectorising ELBO guess its plate nesting now, from the guide without fixed noise.

    ``Trace_ELBO(vectorize_particles=True)`` (and its siblings) without ``max_plate_nesting``
    runs the model and guide once, unvectorised, the first time it is used; under a step's
    handler that run would draw the noise at the unvectorised shape. This runs Pyro's guess
    before the step, with ``guide`` itself (as Pyro would: it consumes randomness the same way),
    for the innermost ELBO of a wrapper stack. Nothing to do for any other ELBO.
    """
    while isinstance(getattr(elbo, "elbo", None), ELBO):  # a wrapper: OTMDR(WDAT(Trace_ELBO()))
        elbo = elbo.elbo
    if getattr(elbo, "vectorize_particles", False) and elbo.max_plate_nesting == float("inf"):
        elbo._guess_max_plate_nesting(model, guide, args, kwargs)


class _SiteNoise:
    """What the step keeps of one guide site's noise.

    A global site's ``kappa`` is its noise. A local site's (``plate`` set) is the whole batch's,
    whose dimension ``dim`` (counted from the right) has one entry per example; an example's
    noise is drawn the first time a pass holds it (``drawn`` marks those; ``None`` once all are),
    and kept for the step. ``settled``: the model's observed sites confirmed ``plate`` as a
    plate over the batch. ``first_rows`` and ``first_shape``: the rows and shape of the pass that
    first sampled it (what it keeps if ``plate`` turns out not to follow the batch).
    """

    def __init__(
        self,
        kappa: torch.Tensor,
        plate: str | None = None,
        dim: int = 0,
        drawn: torch.Tensor | None = None,
        first_rows: torch.Tensor | None = None,
        first_shape: tuple[int, ...] = (),
    ) -> None:
        self.kappa, self.plate, self.dim, self.drawn = kappa, plate, dim, drawn
        self.first_rows, self.first_shape = first_rows, first_shape
        self.settled = False
        self.constant: torch.Tensor | None = None

    def take(self, rows: torch.Tensor | None, shape: Sequence[int], name: str) -> torch.Tensor:
        """The noise of a pass holding ``rows`` (``None``: all, in order), of ``shape``."""
        if self.plate is None:
            if self.kappa.shape != tuple(shape):
                raise _changed_shape(name, self.kappa.shape, shape)
            return self.kappa
        kappa, dim = self.kappa, self.dim
        index = torch.arange(kappa.shape[dim]) if rows is None else rows.cpu()  # host-side rows
        expected = list(kappa.shape)
        expected[dim] = len(index)
        if tuple(shape) != tuple(expected):
            raise _changed_shape(name, torch.Size(expected), shape)
        if self.drawn is not None:  # on the host: no device synchronisation
            missing = index[~self.drawn[index]]
            if len(missing):
                expected[dim] = len(missing)
                drawn = torch.randn(expected, dtype=kappa.dtype, device=kappa.device)
                kappa.index_copy_(dim, missing.to(kappa.device), drawn)
                self.drawn[missing] = True
            if bool(self.drawn.all()):
                self.drawn = None
        return kappa if rows is None else kappa.index_select(dim, index.to(kappa.device))

    def constant_of(self, kappa: torch.Tensor) -> torch.Tensor:
        """``-kappa^2 / 2 - log(2 pi) / 2`` for this pass's ``kappa`` (once per step for a
        global site)."""
        if self.plate is not None:
            return -0.5 * kappa.square() - _HALF_LOG_2PI
        if self.constant is None:
            self.constant = -0.5 * kappa.square() - _HALF_LOG_2PI
        return self.constant


class FixedReparamNoise(Messenger):
    """Draw each Gaussian guide site's standard-normal noise once and reuse it.

    ``noise`` maps site names to the ``kappa`` drawn so far (for a local site, the whole
    batch's); a fresh handler starts a new step.

    :param closed_form_logq: (:class:`~pyro_otmdr.model_space.savings.StepSavings`) a diagonal
        normal site's log-density at its own sample in closed form; off, Pyro computes it.
    :param batch_size: the number of examples of the step's whole batch, when the front end
        tells each pass its rows (:meth:`on_rows`); ``None``: every site is global.
    """

    def __init__(self, closed_form_logq: bool = True, batch_size: int | None = None) -> None:
        super().__init__()
        self.closed_form_logq = closed_form_logq
        self.batch_size = batch_size
        self.noise: dict[str, torch.Tensor] = {}
        self._sites: dict[str, _SiteNoise] = {}
        self._rows: torch.Tensor | None = None
        self._eager: set[int] = set()
        self._recording: dict[str, NoiseSite] | None = None
        self._order: list | None = None

    @classmethod
    def for_batch(
        cls, args: tuple, kwargs: dict, closed_form_logq: bool = True
    ) -> FixedReparamNoise:
        """A handler for a step on the batch ``(args, kwargs)``: its size is the leading
        dimension of the first tensor argument (none: every site is global)."""
        sizes = (v.shape[0] for v in (*args, *kwargs.values()) if _has_batch_dim(v))
        return cls(closed_form_logq, batch_size=next(sizes, None))

    # -- what the front end tells it --------------------------------------------------------------

    @contextmanager
    def on_rows(self, rows: torch.Tensor | None) -> Iterator[None]:
        """Within the block, the pass holds ``rows`` of the whole batch (``None``: all of them,
        in order).

        Usage::

            import pyro
            import pyro.distributions as dist
            import torch
            from pyro import poutine
            from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise

            def guide(x):  # an amortised guide: one z per example, in the data plate
                with pyro.plate("data", 100, subsample_size=len(x)):
                    pyro.sample("z", dist.Normal(2 * x, 1.0).to_event(1))

            x = torch.randn(6, 2)
            fixed = FixedReparamNoise.for_batch((x,), {})  # a step on these 6 examples
            rows = torch.tensor([4, 1, 3])
            with fixed.on_rows(rows):  # a half: rows 4, 1 and 3 of the batch
                z_half = poutine.trace(fixed(guide)).get_trace(x[rows]).nodes["z"]["value"]
            with fixed.on_rows(None):  # the whole batch
                z_all = poutine.trace(fixed(guide)).get_trace(x).nodes["z"]["value"]
            assert torch.equal(z_half, z_all[rows])  # each example keeps its noise
            assert fixed.noise["z"].shape == (6, 2)  # one kappa per example of the batch
        """
        previous, self._rows = self._rows, rows
        try:
            yield
        finally:
            self._rows = previous

    def settle(self, batch_plates: Collection[str]) -> None:
        """After a pass, with the names of the plates over the batch that the model's observed
        sites are in: a site whose plate is one of them is local; any other site first sampled
        in a plate that merely had the pass's size is global and keeps the noise it drew."""
        for name, site in self._sites.items():
            if site.plate is None or site.settled:
                continue
            if site.plate in batch_plates:
                site.settled = True
            else:
                self._make_global(name, site)

    # -- compiled passes ---------------------------------------------------------------------------

    @property
    def rows(self) -> torch.Tensor | None:
        """The rows of the whole batch that the current pass holds (:meth:`on_rows`)."""
        return self._rows

    @contextmanager
    def recording(self, order: list | None = None) -> Iterator[dict[str, NoiseSite]]:
        """Within the block, record each site whose noise a pass asks for, in the order asked
        (the guide's order of sampling): name -> :class:`NoiseSite`, the first ask of a site kept;
        each new one is appended to ``order`` too, when given (to interleave it with other
        random draws of the pass).

        Usage::

            import torch
            from pyro.infer import Trace_ELBO
            from pyro.infer.autoguide import AutoNormal
            from pyro_otmdr.bayes import bayesian
            from pyro_otmdr.model_space.reparam_noise import FixedReparamNoise

            model = bayesian(torch.nn.Linear(4, 3), num_data=16)
            guide, x, y = AutoNormal(model), torch.randn(8, 4), torch.randint(3, (8,))
            fixed = FixedReparamNoise()
            with fixed.recording() as sites:
                Trace_ELBO().loss(model, fixed(guide), x, y)
            assert list(sites) == ["net.weight_unconstrained", "net.bias_unconstrained"]
            kappa, constant = fixed.noise_of(sites["net.weight_unconstrained"])
            assert kappa is fixed.noise["net.weight_unconstrained"] and constant is not None
        """
        previous, self._recording = self._recording, {}
        previous_order, self._order = self._order, order
        try:
            yield self._recording
        finally:
            self._recording, self._order = previous, previous_order

    def noise_of(self, site: NoiseSite) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The noise of a recorded site for the current pass (drawn now if the step has not
        drawn it yet, as the guide would have), and the constant of its closed-form
        log-density when the site took one, else ``None``."""
        kappa, record = self._kappa(
            site.name, site.frames, site.event_dim, self._rows, site.shape, site.like
        )
        return kappa, record.constant_of(kappa) if site.constant else None

    @classmethod
    def given(
        cls,
        noise: dict[str, torch.Tensor],
        constants: dict[str, torch.Tensor],
        closed_form_logq: bool = True,
    ) -> FixedReparamNoise:
        """A handler that serves ``noise[name]`` to each site (and ``constants[name]`` as the
        constant of its closed-form log-density), as one pass's noise, every site global: what
        a compiled pass runs its guide under, with its inputs."""
        handler = cls(closed_form_logq)
        for name, kappa in noise.items():
            record = _SiteNoise(kappa)
            record.constant = constants.get(name)
            handler._sites[name] = record
            handler.noise[name] = kappa
        return handler

    def _record(self, name: str, frames, event_dim: int, shape, like, constant: bool) -> None:
        if self._recording is not None and name not in self._recording:
            empty = like.new_empty(0)
            site = NoiseSite(name, tuple(frames), event_dim, torch.Size(shape), empty, constant)
            self._recording[name] = site
            if self._order is not None:
                self._order.append(site)

    # -- the messenger -----------------------------------------------------------------------------

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or _is_fixed(msg["fn"]):
            return
        if type(msg["fn"]) is dist.Delta:
            msg["fn"] = _SelfDelta(msg["fn"])
            return
        if not getattr(msg["fn"], "has_rsample", False):  # discrete, a plate's subsample
            return
        event_dim = len(msg["fn"].event_shape)
        noise = _PassNoise(self, msg["name"], msg["cond_indep_stack"], event_dim)
        fixed = self._fixed(msg["fn"], noise, self.closed_form_logq)
        if fixed is not None:
            msg["fn"] = fixed
            return
        value = self._value(msg["name"], msg["fn"], noise)
        if value is not None:
            msg["value"] = value
            self._eager.add(id(msg))

    def _pyro_post_sample(self, msg: dict) -> None:
        if id(msg) not in self._eager:
            return
        self._eager.discard(id(msg))
        fn = msg["fn"]
        if msg["value"].shape != fn.batch_shape + fn.event_shape:
            raise ValueError(
                f"guide site {msg['name']!r} is a {type(fn).__name__} whose noise OT-MDR fixes "
                f"at shape {tuple(msg['value'].shape)}, before a plate outside the guide "
                f"(a vectorising ELBO's particles) broadcast it to "
                f"{tuple(fn.batch_shape + fn.event_shape)}: use Pyro's own Normal, "
                "MultivariateNormal or LowRankMultivariateNormal for the site, or "
                "vectorize_particles=False"
            )

    # -- the fixed distributions -------------------------------------------------------------------

    def _fixed(
        self, fn: torch.distributions.Distribution, noise: _PassNoise, closed_form: bool
    ) -> torch.distributions.Distribution | None:
        """``fn`` rebuilt to draw its sample from ``noise``; ``None`` for a distribution that
        is not one of Pyro's Normal, MultivariateNormal, LowRankMultivariateNormal, or one of
        those wrapped in ``Independent`` or transformed (whose base's log-density Pyro
        computes: the transform's inverse hands it its own sample)."""
        if isinstance(fn, Independent):
            base = self._fixed(fn.base_dist, noise, closed_form)
            return None if base is None else dist.Independent(base, fn.reinterpreted_batch_ndims)
        if type(fn) is dist.Normal:
            return _FixedNoiseNormal(fn, noise, closed_form=closed_form)
        if type(fn) is dist.MultivariateNormal:
            return _FixedNoiseMultivariateNormal(fn, noise)
        if type(fn) is dist.LowRankMultivariateNormal:
            return _FixedNoiseLowRankMultivariateNormal(fn, noise)
        if isinstance(fn, TransformedDistribution):
            base = self._fixed(fn.base_dist, noise, closed_form=False)
            if base is None:
                return None
            transformed = copy.copy(fn)
            transformed.base_dist = base
            return transformed
        return None

    def _value(
        self, name: str, fn: torch.distributions.Distribution, noise: _PassNoise
    ) -> torch.Tensor | None:
        """The sample of a Gaussian site of another type (a subclass), computed now."""
        while isinstance(fn, Independent):
            fn = fn.base_dist
        if isinstance(fn, dist.Delta) or not fn.has_rsample:
            return None
        if isinstance(fn, Normal):
            return fn.loc + fn.scale * noise(fn.loc.shape, fn.loc)
        if isinstance(fn, MultivariateNormal):
            kappa = noise(fn.loc.shape, fn.loc)
            return fn.loc + (fn.scale_tril @ kappa.unsqueeze(-1)).squeeze(-1)
        if isinstance(fn, TransformedDistribution):
            base = self._value(name, fn.base_dist, noise)
            if base is not None:
                for transform in fn.transforms:
                    base = transform(base)
                return base
        raise ValueError(
            f"guide site {name!r} is a reparameterised {type(fn).__name__}: OT-MDR fixes the "
            "reparameterisation noise for Normal, MultivariateNormal and "
            "LowRankMultivariateNormal guide sites (AutoNormal, AutoDiagonalNormal, "
            "AutoMultivariateNormal, AutoLowRankMultivariateNormal, AutoDelta, a hand-written "
            "guide sampling those); use one of those"
        )

    # -- the noise of one site -------------------------------------------------------------------

    def _kappa(
        self,
        name: str,
        frames: Sequence[CondIndepStackFrame],
        event_dim: int,
        rows: torch.Tensor | None,
        shape: torch.Size,
        like: torch.Tensor,
    ) -> tuple[torch.Tensor, _SiteNoise]:
        """The noise of site ``name`` for a pass holding ``rows``, of ``shape``."""
        n_rows = self._n_rows(rows)
        site = self._sites.get(name)
        if site is None:
            given = self.noise.get(name)  # noise set by hand (``handler.noise = ...``)
            plate = _batch_plate(name, frames, n_rows)
            if plate is None:
                kappa = torch.randn(shape, dtype=like.dtype, device=like.device)
                site = _SiteNoise(kappa if given is None else given)
            else:
                site = self._new_local(name, plate, event_dim, rows, shape, like, given)
            self._sites[name] = site
            self.noise[name] = site.kappa
        elif site.plate is not None:
            frame = next((f for f in frames if f.name == site.plate), None)
            follows = frame is not None and n_rows is not None and frame.size == n_rows
            if not follows and not site.settled and tuple(shape) == site.first_shape:
                self._make_global(name, site)  # a plate of the guide that had the pass's size
            elif not follows:
                raise _misaligned(name, site.plate, frame, n_rows)
        return site.take(rows, shape, name), site

    def _new_local(
        self,
        name: str,
        plate: CondIndepStackFrame,
        event_dim: int,
        rows: torch.Tensor | None,
        shape: torch.Size,
        like: torch.Tensor,
        given: torch.Tensor | None = None,
    ) -> _SiteNoise:
        """A local site's record: the whole batch's noise (``given``, or drawn now), the plate's
        dimension of the whole batch's size."""
        dim = plate.dim - event_dim
        if len(shape) < -dim or shape[dim] != plate.size:
            raise ValueError(
                f"guide site {name!r} is in plate {plate.name!r} over the batch's "
                f"{plate.size} examples, but its dimension {dim} (the plate's dim {plate.dim} "
                f"left of {event_dim} event dims) has shape {tuple(shape)}: OT-MDR draws a "
                "local variable's noise per example, row for row with the data, and needs the "
                "site's batch shape to have the plate's size at the plate's dim (broadcast the "
                "site's distribution over the plate, and keep the examples out of its event "
                "shape)"
            )
        whole = list(shape)
        whole[dim] = self.batch_size
        record = _SiteNoise(given, plate.name, dim, first_rows=rows, first_shape=tuple(shape))
        if given is None:  # each example's noise is drawn when a pass first holds it
            record.kappa = torch.full(whole, math.nan, dtype=like.dtype, device=like.device)
            record.drawn = torch.zeros(self.batch_size, dtype=torch.bool)
        return record

    def _make_global(self, name: str, site: _SiteNoise) -> None:
        """A site taken for local whose plate does not follow the batch: global from now on,
        with the noise of the rows it first drew (an iid standard normal of its shape)."""
        site.kappa = site.take(site.first_rows, site.first_shape, name)
        site.plate, site.constant, site.drawn = None, None, None
        self.noise[name] = site.kappa

    def _n_rows(self, rows: torch.Tensor | None) -> int | None:
        return self.batch_size if rows is None else len(rows)


class _PassNoise:
    """The noise of one site in one pass: ``noise(shape, like) -> kappa`` (and the constant of
    its closed-form log-density), bound to the pass's rows when the site was met."""

    def __init__(
        self,
        handler: FixedReparamNoise,
        name: str,
        frames: Sequence[CondIndepStackFrame],
        event_dim: int,
    ) -> None:
        self.handler, self.name, self.frames, self.event_dim = handler, name, frames, event_dim
        self.rows = handler._rows

    def __call__(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        self.handler._record(self.name, self.frames, self.event_dim, shape, like, False)
        return self._site(shape, like)[0]

    def with_constant(
        self, shape: torch.Size, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``kappa`` and ``-kappa^2 / 2 - log(2 pi) / 2`` (once per step for a global site)."""
        self.handler._record(self.name, self.frames, self.event_dim, shape, like, True)
        kappa, site = self._site(shape, like)
        return kappa, site.constant_of(kappa)

    def _site(self, shape: torch.Size, like: torch.Tensor) -> tuple[torch.Tensor, _SiteNoise]:
        h = self.handler
        return h._kappa(self.name, self.frames, self.event_dim, self.rows, shape, like)


def _has_batch_dim(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1


def _batch_plate(
    name: str, frames: Sequence[CondIndepStackFrame], n_rows: int | None
) -> CondIndepStackFrame | None:
    """The plate over the pass's ``n_rows`` examples that site ``name`` is in, if any: a
    vectorised plate of that size, one that subsamples (the plate idiom) preferred."""
    if n_rows is None:
        return None
    sized = [f for f in frames if f.vectorized and f.size == n_rows and f.name != PARTICLE_PLATE]
    subsampling = [f for f in sized if f.full_size is not None and f.full_size != f.size]
    found = subsampling or sized
    if len(found) > 1:
        names = " and ".join(repr(f.name) for f in found)
        raise ValueError(
            f"guide site {name!r} is in plates {names}, each of the pass's {n_rows} examples: "
            "OT-MDR cannot tell which one is over the data, to align the site's noise with the "
            "data's rows; subsample the data plate (pyro.plate('data', N, "
            "subsample_size=len(x))) or give the other plate another size"
        )
    return found[0] if found else None


def _changed_shape(name: str, before: Sequence[int], after: Sequence[int]) -> ValueError:
    return ValueError(
        f"guide site {name!r} changed shape within one step ({tuple(before)} -> {tuple(after)}) "
        "outside a plate over the batch: OT-MDR fixes the reparameterisation noise for the "
        "whole step, and splits a local latent variable's noise row for row with the data when "
        "the guide samples it in the data plate (with pyro.plate('data', N, "
        "subsample_size=len(x)): ...), one example per entry of the plate's dim. Sample the "
        "site there, or keep its shape independent of the batch; a custom split_batch must "
        "split every tensor argument with the batch's leading dimension, keyword arguments "
        "included (the batch's row numbers travel as one)"
    )


def _misaligned(
    name: str, plate: str, frame: CondIndepStackFrame | None, n_rows: int | None
) -> ValueError:
    where = f"is not in plate {plate!r}" if frame is None else f"has plate {plate!r} of size "
    where += "" if frame is None else str(frame.size)
    held = "no row numbers" if n_rows is None else f"{n_rows} examples"
    return ValueError(
        f"guide site {name!r} is a local latent variable (in plate {plate!r} over the batch), "
        f"but in this pass it {where} while the pass holds {held}: OT-MDR splits a local "
        "site's noise with the data, so the site must be sampled in the data plate, of the "
        "pass's size, in every pass; a custom split_batch must split every tensor argument "
        "with the batch's leading dimension, keyword arguments included (the row numbers "
        "travel as one)"
    )


def _is_fixed(fn: torch.distributions.Distribution) -> bool:
    """Whether ``fn`` already draws from fixed noise (an inner handler's)."""
    while isinstance(fn, Independent | TransformedDistribution):
        fn = fn.base_dist
    return isinstance(fn, _FixedNoise | _SelfDelta)


class _FixedNoise:
    """A distribution whose ``rsample`` is its fixed noise's sample; ``sample_value`` is the
    last sample it drew (``None`` before), whose log-density a subclass may know."""

    _noise: _PassNoise
    sample_value: torch.Tensor | None

    def _copy_noise_to(self, new: Any) -> Any:
        new._noise = self._noise
        new.sample_value = None
        return new


class _FixedNoiseNormal(_FixedNoise, dist.Normal):
    """A ``Normal`` that draws ``loc + scale * kappa`` and knows its log-density there.

    With ``closed_form``, the log-density at that sample is ``constant - log(scale)``, with
    ``constant = -kappa^2 / 2 - log(2 pi) / 2`` the same for every pass of the step. Other
    values (and without ``closed_form``, every value) get ``Normal``'s.
    """

    def __init__(self, normal: dist.Normal, noise: _PassNoise, closed_form: bool = True) -> None:
        super().__init__(normal.loc, normal.scale, validate_args=False)
        self._validate_args = normal._validate_args
        self._noise, self.sample_value = noise, None
        self._closed_form = closed_form
        self._constant: torch.Tensor | None = None

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> _FixedNoiseNormal:
        new = self._get_checked_instance(_FixedNoiseNormal, _instance)
        new = super().expand(batch_shape, _instance=new)
        new._closed_form, new._constant = self._closed_form, None
        return self._copy_noise_to(new)

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        if self._closed_form:
            kappa, self._constant = self._noise.with_constant(shape, self.loc)
        else:
            kappa = self._noise(shape, self.loc)
        self.sample_value = self.loc + self.scale * kappa
        return self.sample_value

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if not self._closed_form or x is not self.sample_value:
            return super().log_prob(x)
        return self._constant - self.scale.log()


class _FixedNoiseMultivariateNormal(_FixedNoise, dist.MultivariateNormal):
    """A ``MultivariateNormal`` (the same one: its state is shared) that draws
    ``loc + scale_tril @ kappa``."""

    def __init__(self, mvn: dist.MultivariateNormal, noise: _PassNoise) -> None:
        self.__dict__.update(mvn.__dict__)
        self._noise, self.sample_value = noise, None

    def expand(
        self, batch_shape: Sequence[int], _instance: Any = None
    ) -> _FixedNoiseMultivariateNormal:
        new = self._get_checked_instance(_FixedNoiseMultivariateNormal, _instance)
        return self._copy_noise_to(super().expand(batch_shape, _instance=new))

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        kappa = self._noise(self._extended_shape(sample_shape), self.loc)
        self.sample_value = self.loc + (self.scale_tril @ kappa.unsqueeze(-1)).squeeze(-1)
        return self.sample_value


class _FixedNoiseLowRankMultivariateNormal(_FixedNoise, dist.LowRankMultivariateNormal):
    """A ``LowRankMultivariateNormal`` (its state shared) that draws
    ``loc + W @ kappa_W + sqrt(D) * kappa_D``; ``kappa`` is ``(kappa_W, kappa_D)`` concatenated
    along the last dimension (``rank + size`` entries per event)."""

    def __init__(self, low_rank: dist.LowRankMultivariateNormal, noise: _PassNoise) -> None:
        self.__dict__.update(low_rank.__dict__)
        self._noise, self.sample_value = noise, None

    def expand(
        self, batch_shape: Sequence[int], _instance: Any = None
    ) -> _FixedNoiseLowRankMultivariateNormal:
        new = self._get_checked_instance(_FixedNoiseLowRankMultivariateNormal, _instance)
        return self._copy_noise_to(super().expand(batch_shape, _instance=new))

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        rank = self.cov_factor.shape[-1]
        kappa = self._noise(torch.Size((*shape[:-1], rank + shape[-1])), self.loc)
        kappa_w, kappa_d = kappa[..., :rank], kappa[..., rank:]
        factor = self._unbroadcasted_cov_factor
        self.sample_value = (
            self.loc
            + (factor @ kappa_w.unsqueeze(-1)).squeeze(-1)
            + self._unbroadcasted_cov_diag.sqrt() * kappa_d
        )
        return self.sample_value


class _SelfDelta(dist.Delta):
    """A point mass that knows its log-density at its own sample: ``log 1 + log_density``.

    Pyro's ``Delta.log_prob`` compares, casts and takes the log of every entry at every pass
    (a constant zero with no gradient for an ``AutoDelta``); this returns the same value for
    the sample it drew, and defers to ``Delta`` for any other value.
    """

    def __init__(self, delta: dist.Delta) -> None:
        super().__init__(delta.v, delta.log_density, event_dim=delta.event_dim)
        self.sample_value: torch.Tensor | None = None

    def expand(self, batch_shape: Sequence[int], _instance: Any = None) -> _SelfDelta:
        new = self._get_checked_instance(_SelfDelta, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.sample_value = None
        return new

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        self.sample_value = super().rsample(sample_shape)
        return self.sample_value

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x is not self.sample_value:
            return super().log_prob(x)
        zeros = torch.zeros(self.batch_shape, dtype=x.dtype, device=x.device)
        return zeros + self.log_density
