"""Whether a Pyro loss is plate-scaled: a per-example mean, so that halves average to the whole.

Under Pyro's minibatch idiom, ``pyro.plate("data", size=N, subsample_size=len(x))``, the loss of a
batch ``b`` is ``G(theta) + N / |b| * sum_{i in b} l_i(theta)``: terms that do not depend on the
batch (prior, guide, KL) plus the scaled likelihood. For two halves ``B1``, ``B2`` of ``B`` it
follows that ``L_B = (|B1| L_B1 + |B2| L_B2) / |B|``, gradients included, so the whole batch's
gradient at a point is the size-weighted mean of the two halves' gradients there.

:class:`PlateScaling` watches one pass and says whether every observed site of the model sits in
such a subsampling plate over that pass's examples; anything else (an observed site outside the
plate, a plate over the batch with ``size=len(x)``, a ``pyro.factor`` term) makes it answer no.

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
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

__all__ = ["PlateScaling"]


class PlateScaling(Messenger):
    """Record whether each observed site is in a subsampling plate of ``batch_size`` examples.

    :param batch_size: the number of examples of the pass watched.
    """

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.observed = 0
        self.scaled = 0

    @property
    def holds(self) -> bool:
        """At least one observed site, and every observed site plate-scaled."""
        return self.observed > 0 and self.scaled == self.observed

    def _pyro_sample(self, msg: dict) -> None:
        if not msg["is_observed"]:
            return
        self.observed += 1
        if any(self._subsamples_batch(frame) for frame in msg["cond_indep_stack"]):
            self.scaled += 1

    def _subsamples_batch(self, frame) -> bool:
        full = frame.full_size
        return frame.size == self.batch_size and full is not None and full != frame.size
