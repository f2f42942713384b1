"""The chores every attack shares: argument checks, eval mode, norms, and one gradient pass.

An attack is a function of ``(predict, x, y, budget, ...)``; this module owns what is not the
attack itself:

* :func:`check_attack_args` validates the budget, ``p``, ``cost``, ``loss``, the box and the
  lengths of ``x`` and ``y`` with ``ValueError`` s that name the allowed values; inputs that are
  NaN, infinite or outside the box are refused once, at entry (:func:`check_box`, one device
  synchronisation), NaN and infinity with a :class:`NonFiniteValueError` naming the first entry;
* :func:`attack_mode` puts the predictor's modules in eval mode and restores their modes after;
* :func:`loss_pass` runs the predictor over the whole set in chunks and returns the per-example
  input gradients (``torch.autograd.grad`` with respect to the input only, so no parameter is
  left with a ``.grad``), correctness and losses;
* :func:`point_norms` and :func:`w_distance` measure perturbations in the input cost.

Usage::

    import torch
    from pyro_otmdr.data_space.common import attack_mode, check_attack_args, loss_pass
    from pyro_otmdr.data_space.losses import ce

    predict = torch.nn.Linear(4, 3)
    x, y = torch.rand(8, 4), torch.randint(3, (8,))
    p, s = check_attack_args(x, y, budget=("delta", 0.1), p=2, cost="linf", loss="redlr",
                             box=(0, 1))                      # (2.0, 1.0)
    with attack_mode(predict):
        grads, correct, losses = loss_pass(predict, x, y, ce, batch_size=256, need_grad=True)
    assert grads.shape == x.shape and correct.shape == losses.shape == (8,)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .losses import LOSSES

__all__ = [
    "COSTS",
    "ORDERS",
    "NonFiniteValueError",
    "attack_mode",
    "check_attack_args",
    "check_box",
    "check_choice",
    "check_inputs",
    "check_positive",
    "dual_exponent",
    "loss_pass",
    "point_norms",
    "predictor_device",
    "w_distance",
]

#: Input costs ``||x - x'||_r``: ``"linf"`` (r = inf) and ``"l2"`` (r = 2).
COSTS = ("linf", "l2")
#: Wasserstein orders: 2 and ``inf`` (``float("inf")`` or the string ``"inf"``).
ORDERS = (2, math.inf)

Predictor = Callable[[torch.Tensor], torch.Tensor]


class NonFiniteValueError(ValueError):
    """A tensor given to the data-space layer holds NaN or infinity.

    :ivar index: the index of the first such entry (row-major order).
    :ivar value: its value: ``nan``, ``inf`` or ``-inf``.
    """

    def __init__(self, message: str, index: tuple[int, ...], value: float) -> None:
        super().__init__(message)
        self.index, self.value = index, value


def check_choice(what: str, value: Any, allowed: tuple) -> None:
    """``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"unknown {what} {value!r}; choose one of {names}")


def check_positive(name: str, value: Any, kind: type = float) -> None:
    """``ValueError`` unless ``value`` is a finite number > 0 (an ``int`` >= 1 for ``int``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and isinstance(value, int)
    if not ok or not math.isfinite(value):
        wanted = "a positive int" if kind is int else "a number > 0"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def _order(p: Any) -> float:
    if p in ("inf", math.inf):
        return math.inf
    if p == 2 and not isinstance(p, bool):
        return 2.0
    raise ValueError(f"unknown Wasserstein order p={p!r}; choose 2 or inf (float('inf') or 'inf')")


def dual_exponent(cost: str) -> float:
    """``s``, the dual exponent of the cost norm: ``linf`` -> 1, ``l2`` -> 2."""
    check_choice("cost", cost, COSTS)
    return 1.0 if cost == "linf" else 2.0


def check_attack_args(
    x: Any, y: Any, *, budget: tuple[str, Any], p: Any, cost: str, loss: str, box: Any
) -> tuple[float, float]:
    """Validate an attack's arguments; returns ``(p, s)`` as floats.

    :param budget: ``(name, value)``, e.g. ``("delta", 0.1)``; the value must be > 0.
    :raises NonFiniteValueError: (a ``ValueError``) for NaN or infinity in ``x``, naming the
        first such entry.
    :raises ValueError: naming the allowed values, for every other bad argument.
    """
    check_positive(budget[0], budget[1])
    order = _order(p)
    check_choice("loss", loss, tuple(LOSSES))
    s = dual_exponent(cost)
    check_inputs(x, y, box)
    return order, s


def check_inputs(x: Any, y: Any, box: Any, *, values: bool = True) -> None:
    """``x`` a float tensor of finite values inside ``box``; ``y`` an integer label per example.

    :param values: also check the values of ``x`` (:func:`check_box`, one device sync); without
        it, only the shapes and the box, on the host.
    :raises NonFiniteValueError: for NaN or infinity in ``x``, naming the first entry.
    :raises ValueError: for every other bad argument.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (N, ...) with N >= 1")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        raise ValueError("y must be a 1-D tensor of integer labels")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"x and y must have the same non-zero length, got {x.shape[0]} and {y.shape[0]}"
        )
    if not (isinstance(box, tuple | list) and len(box) == 2 and float(box[0]) < float(box[1])):
        raise ValueError(f"box must be a pair (low, high) with low < high, got {box!r}")
    if values:
        check_box(x, (float(box[0]), float(box[1])))


def check_box(x: torch.Tensor, box: tuple[float, float]) -> None:
    """``ValueError`` unless every entry of the float tensor ``x`` is finite and inside ``box``.

    One reduction and one device synchronisation (NaN propagates to the minimum and the
    maximum, so the same comparison refuses it); only a refused ``x`` is looked at again.

    :raises NonFiniteValueError: for NaN or infinity, naming the first such entry.

    Usage::

        import torch
        from pyro_otmdr.data_space.common import check_box

        check_box(torch.rand(8, 4), (0.0, 1.0))           # inside: returns None
        try:
            check_box(torch.full((8, 4), 2.0), (0.0, 1.0))
        except ValueError as err:
            assert "outside the box" in str(err)          # x lies outside the box [0.0, 1.0] ...
        else:
            raise AssertionError("not refused")
    """
    if x.numel() == 0:
        return
    low, high = torch.tensor(box, dtype=x.dtype).tolist()  # compared as x's dtype compares
    x = x.detach()
    smallest, largest = torch.stack(torch.aminmax(x)).tolist()
    if low <= smallest and largest <= high:
        return
    bad = (~torch.isfinite(x)).nonzero()
    if bad.shape[0]:
        index = tuple(bad[0].tolist())
        value = float(x[index])
        raise NonFiniteValueError(
            f"x holds a non-finite value ({value}) at index {index}: attacks need finite inputs "
            f"in the box [{box[0]:g}, {box[1]:g}]",
            index,
            value,
        )
    raise ValueError(
        f"x lies outside the box [{box[0]}, {box[1]}] (min {smallest:.4g}, max {largest:.4g}): "
        "give inputs in their natural box and put any normalisation inside the model, or pass "
        "box=(low, high)"
    )


def point_norms(t: torch.Tensor, r: float) -> torch.Tensor:
    """``||t_i||_r`` of every example (dim 0), ``r`` in ``{1, 2, inf}``."""
    return torch.linalg.vector_norm(t.flatten(1), ord=r, dim=1)


def w_distance(x: torch.Tensor, x_adv: torch.Tensor, *, p: Any = 2, cost: str = "linf") -> float:
    """The ``W_p`` cost of moving every ``x_i`` to ``x_adv_i`` (an upper bound on ``W_p``).

    ``(mean_i ||x_adv_i - x_i||_r^p)^(1/p)``, and ``max_i ||x_adv_i - x_i||_r`` for ``p = inf``.

    Usage::

        import torch
        from pyro_otmdr.data_space import w_distance, w_pgd

        net, delta = torch.nn.Linear(4, 3), 0.05
        x, y = torch.rand(16, 4), torch.randint(3, (16,))
        result = w_pgd(net, x, y, delta=delta, steps=5)
        assert w_distance(x, result.x_adv, p=2, cost="linf") <= delta + 1e-6
    """
    order, r = _order(p), (math.inf if dual_exponent(cost) == 1.0 else 2.0)
    norms = point_norms((x_adv - x.to(x_adv.device)).double(), r)
    if order == math.inf:
        return float(norms.max())
    return float(norms.pow(order).mean().pow(1.0 / order))


def _modules(predict: Predictor) -> list[torch.nn.Module]:
    found = [predict, getattr(predict, "model", None)]
    return [m for m in found if isinstance(m, torch.nn.Module)]


@contextlib.contextmanager
def attack_mode(predict: Predictor) -> Iterator[None]:
    """Eval mode for the predictor (and a posterior predictive's model); modes restored after."""
    saved = [(m, m.training) for module in _modules(predict) for m in module.modules()]
    for module in _modules(predict):
        module.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def predictor_device(predict: Predictor, x: torch.Tensor) -> torch.device:
    """The device of the predictor (its ``device`` attribute, or a parameter's), else ``x``'s."""
    device = getattr(predict, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(predict, torch.nn.Module):
        for tensor in (*predict.parameters(), *predict.buffers()):
            return tensor.device
    return x.device


def _logits(predict: Predictor, x: torch.Tensor) -> torch.Tensor:
    logits = predict(x)
    if not isinstance(logits, torch.Tensor) or logits.shape[:1] != x.shape[:1] or logits.dim() != 2:
        raise ValueError(
            "predict must map a batch of B inputs to logits or log-probabilities of shape (B, C), "
            f"got {getattr(logits, 'shape', type(logits).__name__)} for B={x.shape[0]}"
        )
    return logits


def loss_pass(
    predict: Predictor,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    need_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One pass over the whole set: ``(grads, correct, losses)``.

    ``grads[i]`` is the gradient of ``loss_fn`` at ``x_i`` (from the *sum* of the per-example
    losses, so it carries no ``1/B``), or ``None`` without ``need_grad``; ``correct`` is a bool
    per example (argmax of the logits equals ``y``); ``losses`` the per-example loss (float64).
    """
    n = x.shape[0]
    grads = torch.empty_like(x) if need_grad else None
    correct = torch.empty(n, dtype=torch.bool, device=x.device)
    losses = torch.empty(n, dtype=torch.float64, device=x.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        chunk = x[start:stop].detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            logits = _logits(predict, chunk)
            loss = loss_fn(logits, y[start:stop])
            if need_grad:
                (grads[start:stop],) = torch.autograd.grad(loss.sum(), chunk)
        correct[start:stop] = logits.detach().argmax(-1) == y[start:stop]
        losses[start:stop] = loss.detach().double()
    return grads, correct, losses
