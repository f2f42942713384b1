"""Which parameters a sharpness-aware step moves: point estimates and means, never scales.

OT-MDR perturbs the center of the model distribution: the point estimate of a Dirac (``AutoDelta``
and plain ``pyro.module`` parameters), each member of an ensemble, and the means of a Gaussian guide
(``AutoNormal``'s ``locs``). The spread of a Gaussian guide is not moved; it takes its gradient at
the unperturbed sample.

The rule works on param-store names: a parameter is left alone when a component of its dotted name
is one of :data:`SCALE_NAMES` (``AutoNormal.scales.w``, ``AutoDiagonalNormal.scale``,
``AutoLowRankMultivariateNormal.cov_factor`` ...). Pass your own ``perturb=`` to override it.
An ``AutoLowRankMultivariateNormal`` thus moves its ``loc``; its ``scale`` and ``cov_factor``
take the gradient at the unperturbed sample, its noise fixed for the step like every Gaussian
guide's (:mod:`.reparam_noise`).

Usage::

    from pyro.infer import Trace_ELBO
    from pyro_otmdr import OTMDR, perturbed_by_default

    assert perturbed_by_default("AutoNormal.locs.fc.weight")          # a mean: moved
    assert not perturbed_by_default("AutoNormal.scales.fc.weight")    # a spread: left alone
    loss = OTMDR(Trace_ELBO(), rho=0.05, perturb=lambda name: name.startswith("net$$$"))
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["SCALE_NAMES", "PerturbRule", "perturbed_by_default"]

PerturbRule = Callable[[str], bool]
"""``perturb(param_store_name) -> bool``: whether the step moves this parameter."""

SCALE_NAMES = frozenset({"scale", "scales", "scale_tril", "cov_factor", "cov_diag"})
"""Name components of the spread parameters of Pyro's Gaussian autoguides (``scales``,
``scale``, ``scale_tril``, ``cov_factor``), and ``cov_diag``, a hand-written low-rank guide's."""


def perturbed_by_default(name: str) -> bool:
    """True unless a component of ``name`` (split at ``.``, ``$$$``) is in :data:`SCALE_NAMES`."""
    return not any(part in SCALE_NAMES for part in re.split(r"\.|\$\$\$", name))
