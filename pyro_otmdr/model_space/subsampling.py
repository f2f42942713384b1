"""Whether a Pyro loss is plate-scaled: a per-example mean, so that halves average to the whole.

Under Pyro's minibatch idiom, ``pyro.plate("data", size=N, subsample_size=len(x))``, the loss of a
batch ``b`` is ``G(theta) + N / |b| * sum_{i in b} l_i(theta)``: terms that do not depend on the
batch (prior, guide, KL) plus the scaled likelihood. For two halves ``B1``, ``B2`` of ``B`` it
follows that ``L_B = (|B1| L_B1 + |B2| L_B2) / |B|``, gradients included, so the whole batch's
gradient at a point is the size-weighted mean of the two halves' gradients there.

:class:`PlateScaling` watches one pass and says whether every observed site of the model sits in
such a subsampling plate over that pass's examples; anything else (an observed site outside the
plate, a plate over the batch with ``size=len(x)``, a ``pyro.factor`` term) makes it answer no.
Local latent variables (a VAE's ``z``, sampled in the data plate by the guide and the model)
are per-example terms too, when their plate subsamples: a latent site in a plate over the batch
that does not subsample (a sum over the batch, not a mean) makes it answer no as well. It also
names the plates over the batch that the observed sites are in (``batch_plates``): the step's
noise handler tells the data plate from a plate of the guide that merely has the batch's size.

Usage::

    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.model_space.subsampling import PlateScaling

    model = bayesian(torch.nn.Linear(4, 3), num_data=100)   # plate(size=100, subsample_size=8)
    guide, elbo = AutoNormal(model), Trace_ELBO()
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    scaling = PlateScaling(batch_size=len(x))
    with scaling:
        elbo.loss_and_grads(model, guide, x, y)
    assert scaling.holds  # True for the plate idiom
    assert scaling.batch_plates == {"data"}
"""

from __future__ import annotations

from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger

__all__ = ["PARTICLE_PLATE", "PlateScaling"]

PARTICLE_PLATE = "num_particles_vectorized"
"""The plate over a vectorising Pyro ELBO's particles (never the data's)."""


class PlateScaling(Messenger):
    """Record whether each observed site is in a subsampling plate of ``batch_size`` examples.

    :param batch_size: the number of examples of the pass watched.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.observed = 0
        self.scaled = 0
        self.batch_plates: set[str] = set()
        """The plates over the batch (of ``batch_size``) that observed sites are in."""
        self._summed_latent_plates: set[str] = set()

    @property
    def holds(self) -> bool:
        """At least one observed site, every observed site plate-scaled, and no latent site in
        a plate over the batch that does not subsample."""
        summed = self._summed_latent_plates & self.batch_plates
        return self.observed > 0 and self.scaled == self.observed and not summed

    def update(self, other: PlateScaling) -> None:
        """Add what ``other`` saw (a pass of the same batch size) to what this one saw: a
        compiled pass sends no message, so it hands over what its compilation's pass saw."""
        self.observed += other.observed
        self.scaled += other.scaled
        self.batch_plates |= other.batch_plates
        self._summed_latent_plates |= other._summed_latent_plates

    def _pyro_sample(self, msg: dict) -> None:
        frames = msg["cond_indep_stack"]
        if not msg["is_observed"]:
            self._summed_latent_plates.update(f.name for f in frames if self._sums_batch(f))
            return
        self.observed += 1
        self.batch_plates.update(f.name for f in frames if self._over_batch(f))
        if any(self._subsamples_batch(frame) for frame in frames):
            self.scaled += 1

    def _over_batch(self, frame: CondIndepStackFrame) -> bool:
        return frame.vectorized and frame.size == self.batch_size and frame.name != PARTICLE_PLATE

    def _sums_batch(self, frame: CondIndepStackFrame) -> bool:
        return self._over_batch(frame) and frame.full_size in (None, frame.size)

    def _subsamples_batch(self, frame) -> bool:
        full = frame.full_size
        return frame.size == self.batch_size and full is not None and full != frame.size
