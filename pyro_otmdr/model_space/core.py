"""The pure tensor core of a sharpness-aware step: norms, ascent moves, noise, snapshot, restore.

Everything here works on whole lists of tensors at once (``torch._foreach_*``), knows nothing
about Pyro, and never synchronises with the device: the step size ``radius / ||g||`` stays a
0-d tensor on the parameters' device.

Usage::

    saved = snapshot(params)
    ascend_(params, grads, radius=0.05)          # theta += rho * g / ||g||
    add_gaussian_noise_(params, std=1e-4, generator=g)
    ...
    restore_(params, saved)                       # bit-exact, from the saved copy
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["add_gaussian_noise_", "ascend_", "global_norm", "restore_", "snapshot"]

_EPS = 1e-12


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One L2 norm over all ``tensors`` together (not a norm per tensor), as a 0-d tensor.

    Usage::

        global_norm([torch.tensor([3.0]), torch.tensor([4.0])])  # tensor(5.)
    """
    if not tensors:
        raise ValueError("global_norm needs at least one tensor")
    per_tensor = torch._foreach_norm(list(tensors))
    return torch.linalg.vector_norm(torch.stack(per_tensor))


@torch.no_grad()
def ascend_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    radius: float,
    direction: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Move ``params`` in place by ``radius * direction / ||grads||`` (one global norm).

    ``direction`` defaults to ``grads``. A zero gradient leaves the parameters where they are.
    Returns the gradient norm.

    Usage::

        p = [torch.zeros(2)]
        ascend_(p, [torch.tensor([3.0, 4.0])], radius=1.0)  # p[0] == [0.6, 0.8]
    """
    norm = global_norm(grads)
    step = radius / (norm + _EPS)
    move = list(grads if direction is None else direction)
    torch._foreach_add_(list(params), torch._foreach_mul(move, step))
    return norm


@torch.no_grad()
def add_gaussian_noise_(
    params: Sequence[torch.Tensor], std: float, generator: torch.Generator | None = None
) -> None:
    """Add independent ``N(0, std^2)`` noise to every entry of ``params`` in place.

    The noise is drawn in one call into a flat buffer (on the generator's device) and split into
    views, so the cost does not grow with the number of tensors. ``std == 0`` draws nothing.

    Usage::

        g = torch.Generator().manual_seed(0)
        add_gaussian_noise_([torch.zeros(3)], std=0.1, generator=g)
    """
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0 or not params:
        return
    first = params[0]
    if any(p.dtype != first.dtype or p.device != first.device for p in params):
        for p in params:  # mixed dtypes or devices: no common flat buffer
            p.add_(
                torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=std
            )
        return
    sizes = [p.numel() for p in params]
    flat = torch.randn(sum(sizes), generator=generator, device=first.device, dtype=first.dtype)
    noise = [chunk.view_as(p) for chunk, p in zip(flat.split(sizes), params, strict=True)]
    torch._foreach_add_(list(params), noise, alpha=std)


@torch.no_grad()
def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of ``params`` to restore from later.

    Usage::

        saved = snapshot(params)
    """
    return [p.clone() for p in params]


@torch.no_grad()
def restore_(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    """Copy ``saved`` back into ``params`` in place: bit-exact, never by subtracting a move.

    Usage::

        restore_(params, saved)
    """
    torch._foreach_copy_(list(params), list(saved))
