"""The geometry of an ascent move: how the radius ``rho`` is shared among the perturbed tensors.

With ``g`` the gradient of the perturbed parameters (``d`` the direction, ``g`` unless
``merge_grads``), one move of radius ``rho`` is, per geometry:

* ``"global"`` (the paper's, the default): ``e = rho * d / ||g||``, one L2 ball over all the
  parameters together; each tensor moves in proportion to its share of the whole gradient.
* ``"layer"``: each tensor ``w_l`` moves by ``rho * ||w_l||`` along its own normalised gradient,
  ``e_l = rho * ||w_l|| * d_l / ||g_l||`` (the layer-relative move of AWP, Wu et al. 2020): rho
  is a fraction of each tensor's own size. A tensor at zero (a bias at its initial value) does
  not move until it has grown; every perturbed tensor takes part (AWP moves weights only: pass
  ``perturb=`` to leave biases and normalisation parameters out).
* ``"elementwise"``: ASAM's scale-invariant ball (Kwon et al. 2021), ``e = rho * T^2 d / ||T g||``
  with ``T = |w| + eta`` element by element (``eta = 0.01``).
* ``"posterior"``, for Gaussian guides: the same move with ``T = s``, the guide's scale of each
  mean: the steepest ascent in the metric of the diagonal Gaussian (its Fisher information for
  the means is ``1 / s^2``), so that ``rho`` means the same for every layer and every posterior
  width (bSAM's ``rho * g / s`` is the precedent). A mean without a scale (a point mass) is an
  error.

OT-MDR's two moves, its particles, the noise, the fixed reparameterisation noise and the
centre gradient of the parameters that are not perturbed are the same under every geometry.

Usage::

    import torch
    from pyro_otmdr.model_space.geometry import Geometry

    w = [torch.tensor([3.0, 4.0]), torch.tensor([1.0])]
    g = [torch.tensor([0.0, 2.0]), torch.tensor([-7.0])]
    Geometry.of("layer").move_(w, g, radius=0.1)        # each tensor by 10% of its own norm
    assert torch.allclose(w[1], torch.tensor([0.9]))
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .core import ascend_, ascend_per_tensor_, ascend_scaled_

__all__ = ["DEFAULT_ETA", "GEOMETRIES", "Geometry", "scale_partner"]

#: The geometries of :class:`Geometry`, the first the default.
GEOMETRIES: tuple[str, ...] = ("global", "layer", "elementwise", "posterior")

#: ASAM's ``eta``: ``T = |w| + eta`` keeps a zero weight movable.
DEFAULT_ETA = 0.01


@dataclass(frozen=True)
class Geometry:
    """How one ascent move spends its radius; see the module docstring.

    :param name: one of :data:`GEOMETRIES`.
    :param eta: the ``eta`` of ``"elementwise"``.
    """

    name: str = "global"
    eta: float = DEFAULT_ETA

    def __post_init__(self) -> None:
        if self.name not in GEOMETRIES:
            raise ValueError(
                f"unknown geometry {self.name!r}; choose one of {', '.join(GEOMETRIES)}"
            )
        if not (isinstance(self.eta, int | float) and math.isfinite(self.eta) and self.eta > 0):
            raise ValueError(f"eta must be a finite number > 0, got {self.eta!r}")

    @classmethod
    def of(cls, geometry: str | Geometry | None) -> Geometry:
        """``geometry`` as a :class:`Geometry` (a name, one already, or ``None``: global)."""
        if geometry is None:
            return cls()
        if isinstance(geometry, Geometry):
            return geometry
        if not isinstance(geometry, str):
            raise TypeError(f"geometry must be a name or a Geometry, got {geometry!r}")
        return cls(geometry)

    @property
    def needs_scales(self) -> bool:
        """Whether the move needs each perturbed mean's scale (``"posterior"``)."""
        return self.name == "posterior"

    def move_(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        radius: float,
        direction: Sequence[torch.Tensor] | None = None,
        scales: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Move ``params`` in place by one ascent step of ``radius``; return ``||g||``.

        ``scales`` (``"posterior"`` only): the scale of each parameter, same shapes.
        """
        if self.name == "global":
            return ascend_(params, grads, radius, direction)
        if self.name == "layer":
            return ascend_per_tensor_(params, grads, radius, direction)
        if self.name == "elementwise":
            metric = torch._foreach_add(torch._foreach_abs(list(params)), self.eta)
        else:
            if scales is None or len(scales) != len(params):
                raise ValueError("the posterior geometry needs the scale of every perturbed mean")
            metric = list(scales)
        return ascend_scaled_(params, grads, radius, metric, direction)


def scale_partner(name: str, names: Sequence[str]) -> str | None:
    """The name among ``names`` of the scale that goes with the mean ``name``, or ``None``.

    ``AutoNormal.locs.fc.weight`` goes with ``AutoNormal.scales.fc.weight``,
    ``AutoDiagonalNormal.loc`` with ``AutoDiagonalNormal.scale``; a ``_unconstrained`` suffix (a
    module's parameter, the torch route) is kept on both sides.

    Usage::

        from pyro_otmdr.model_space.geometry import scale_partner

        names = ["AutoNormal.locs.w", "AutoNormal.scales.w"]
        assert scale_partner("AutoNormal.locs.w", names) == "AutoNormal.scales.w"
        assert scale_partner("AutoDelta.w", ["AutoDelta.w"]) is None
    """
    parts = re.sub(r"_unconstrained$", "", name).split(".")
    for i, part in enumerate(parts):
        if part in ("locs", "loc"):
            swapped = ".".join(
                [*parts[:i], "scales" if part == "locs" else "scale", *parts[i + 1 :]]
            )
            for candidate in (swapped, swapped + "_unconstrained"):
                if candidate in names:
                    return candidate
    return None


def scales_for(
    geometry: Geometry, names: Sequence[str], lookup: Callable[[str], torch.Tensor | None]
) -> list[torch.Tensor] | None:
    """The scale of each perturbed parameter named in ``names``, by ``lookup(mean_name)``, when
    ``geometry`` needs them; a ``ValueError`` naming the first mean without one."""
    if not geometry.needs_scales:
        return None
    scales = []
    for name in names:
        scale = lookup(name)
        if scale is None:
            raise ValueError(
                f"geometry='posterior' moves the means of a Gaussian guide in units of their "
                f"scales, but the perturbed parameter {name!r} has no scale (a point estimate?): "
                "use a Gaussian guide (AutoNormal, AutoDiagonalNormal) or another geometry"
            )
        scales.append(scale.detach())
    return scales
