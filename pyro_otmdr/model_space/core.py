"""The pure tensor core of a sharpness-aware step: norms, ascent moves, noise, snapshot, restore,
and the ``.grad`` buffers the passes leave.

Everything here works on whole lists of tensors at once (``torch._foreach_*``), knows nothing
about Pyro, and never synchronises with the device: the step size ``radius / ||g||`` stays a
0-d tensor on the parameters' device.

Usage::

    import torch
    from pyro_otmdr.model_space.core import (add_gaussian_noise_, ascend_, restore_, snapshot,
                                             zero_grads_)

    params = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]
    sum(p.square().sum() for p in params).backward()
    grads, g = [p.grad for p in params], torch.Generator().manual_seed(0)
    saved = snapshot(params)
    ascend_(params, grads, radius=0.05)          # theta += rho * g / ||g||
    add_gaussian_noise_(params, std=1e-4, generator=g)
    restore_(params, saved)                       # bit-exact, from the saved copy
    assert all(torch.equal(p, s) for p, s in zip(params, saved, strict=True))
    zero_grads_(params)                           # .grad zeroed in place
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "add_gaussian_noise_",
    "ascend_",
    "ascend_per_tensor_",
    "ascend_scaled_",
    "global_norm",
    "grads_of",
    "restore_",
    "snapshot",
    "take_grads_",
    "zero_grads_",
]

_EPS = 1e-12


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One L2 norm over all ``tensors`` together (not a norm per tensor), as a 0-d tensor.

    Usage::

        import torch
        from pyro_otmdr.model_space.core import global_norm

        assert global_norm([torch.tensor([3.0]), torch.tensor([4.0])]) == 5.0   # not 3 + 4
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

        import torch
        from pyro_otmdr.model_space.core import ascend_

        p = [torch.zeros(2)]
        norm = ascend_(p, [torch.tensor([3.0, 4.0])], radius=1.0)  # returns ||g|| = 5
        assert torch.allclose(p[0], torch.tensor([0.6, 0.8])) and norm == 5.0
    """
    norm = global_norm(grads)
    step = radius / (norm + _EPS)
    move = list(grads if direction is None else direction)
    torch._foreach_add_(list(params), torch._foreach_mul(move, step))
    return norm


@torch.no_grad()
def ascend_per_tensor_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    radius: float,
    direction: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Move each tensor ``w_l`` in place by ``radius * ||w_l|| * d_l / ||g_l||`` (a norm per
    tensor, AWP's layer-relative move); ``d`` defaults to ``grads``. A zero tensor or a zero
    gradient stays where it is. Returns the global gradient norm.

    Usage::

        import torch
        from pyro_otmdr.model_space.core import ascend_per_tensor_

        w = [torch.tensor([3.0, 4.0]), torch.tensor([1.0])]      # norms 5 and 1
        ascend_per_tensor_(w, [torch.tensor([0.0, 2.0]), torch.tensor([-7.0])], radius=0.1)
        assert torch.allclose(w[0], torch.tensor([3.0, 4.5]))      # 0.1 * 5 * (0, 2) / 2
        assert torch.allclose(w[1], torch.tensor([0.9]))           # 0.1 * 1 * (-7) / 7
    """
    grads = list(grads)
    sizes = torch._foreach_norm(list(params))
    norms = torch._foreach_norm(grads)
    move = grads if direction is None else list(direction)
    for p, d, size, norm in zip(params, move, sizes, norms, strict=True):
        p.add_(d * (radius * size / (norm + _EPS)))
    return torch.linalg.vector_norm(torch.stack(norms))


@torch.no_grad()
def ascend_scaled_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    radius: float,
    metric: Sequence[torch.Tensor],
    direction: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Move ``params`` in place by ``radius * T^2 d / ||T g||`` (one global norm), ``T`` the
    elementwise ``metric``: the steepest ascent in the ball ``||T^-1 e|| <= radius`` (ASAM's
    move with ``T = |w| + eta``; a Gaussian's natural one with ``T`` its scales). ``d``
    defaults to ``grads``. Returns the global gradient norm ``||g||``.

    Usage::

        import torch
        from pyro_otmdr.model_space.core import ascend_scaled_

        w = [torch.zeros(2)]
        ascend_scaled_(w, [torch.tensor([1.0, 1.0])], radius=1.0, metric=[torch.tensor([3.0, 4.0])])
        assert torch.allclose(w[0], torch.tensor([9.0, 16.0]) / 5)   # T^2 g / ||T g||
    """
    grads = list(grads)
    metric = list(metric)
    scaled_norm = global_norm(torch._foreach_mul(grads, metric))
    move = torch._foreach_mul(grads if direction is None else list(direction), metric)
    torch._foreach_mul_(move, metric)
    torch._foreach_mul_(move, radius / (scaled_norm + _EPS))
    torch._foreach_add_(list(params), move)
    return global_norm(grads)


@torch.no_grad()
def add_gaussian_noise_(
    params: Sequence[torch.Tensor], std: float, generator: torch.Generator | None = None
) -> None:
    """Add independent ``N(0, std^2)`` noise to every entry of ``params`` in place.

    The noise is drawn in one call into a flat buffer (on the generator's device) and split into
    views, so the cost does not grow with the number of tensors. ``std == 0`` draws nothing.

    Usage::

        import torch
        from pyro_otmdr.model_space.core import add_gaussian_noise_

        p = [torch.zeros(3)]
        add_gaussian_noise_(p, std=0.1, generator=torch.Generator().manual_seed(0))
        q = [torch.zeros(3)]
        add_gaussian_noise_(q, std=0.1, generator=torch.Generator().manual_seed(0))
        assert p[0].any() and torch.equal(p[0], q[0])   # the same seed, the same noise
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

        import torch
        from pyro_otmdr.model_space.core import snapshot

        params = [torch.ones(2, requires_grad=True)]
        saved = snapshot(params)
        assert not saved[0].requires_grad and saved[0] is not params[0]   # a detached copy
    """
    return [p.clone() for p in params]


@torch.no_grad()
def restore_(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    """Copy ``saved`` back into ``params`` in place: bit-exact, never by subtracting a move.

    Usage::

        import torch
        from pyro_otmdr.model_space.core import restore_, snapshot

        params = [torch.ones(2)]
        saved = snapshot(params)
        params[0].add_(0.1)                           # a move, e.g. the ascent
        restore_(params, saved)
        assert torch.equal(params[0], torch.ones(2))  # bit-exact
    """
    torch._foreach_copy_(list(params), list(saved))


def grads_of(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter, a zero tensor where a pass left none.

    Usage::

        import torch
        from pyro_otmdr.model_space.core import grads_of

        p = torch.ones(2, requires_grad=True)
        (g,) = grads_of([p])  # no pass yet: a zero tensor, which is now p.grad itself
        assert g is p.grad and not g.any()
    """
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    return grads


def take_grads_(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each parameter (zeros where a pass left none), detached from it: the
    parameters' ``.grad`` become ``None``, so the next pass writes fresh ones (no copy).

    Usage::

        import torch
        from pyro_otmdr.model_space.core import take_grads_

        p = torch.ones(2, requires_grad=True)
        (2 * p).sum().backward()
        (kept,) = take_grads_([p])
        assert p.grad is None and torch.equal(kept, torch.full((2,), 2.0))
    """
    grads = grads_of(params)
    for p in params:
        p.grad = None
    return grads


def zero_grads_(params: Sequence[torch.Tensor]) -> None:
    """Zero the existing ``.grad`` of ``params`` in place (a missing one stays ``None``).

    Usage::

        import torch
        from pyro_otmdr.model_space.core import zero_grads_

        p, q = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
        (2 * p).sum().backward()
        zero_grads_([p, q])
        assert not p.grad.any() and q.grad is None
    """
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)
