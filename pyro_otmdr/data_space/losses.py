"""Per-example attack losses on logits (or log-probabilities): CE, DLR and rectified DLR.

Each loss maps ``logits`` of shape ``(B, C)`` and integer labels ``(B,)`` to a loss per example,
shape ``(B,)``; an attack ascends it. DLR is the difference-of-logits ratio of Croce and Hein
(arXiv 2003.01690); ReDLR ("rectified DLR", Bai et al. 2023) is ``min(DLR, 0)``: zero, with zero
gradient, on every misclassified example, so a distributional attack spends no budget there.

Usage::

    import torch
    from pyro_otmdr.data_space.losses import get_loss

    logits, y = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([0, 0])
    loss = get_loss("redlr")(logits, y)      # one loss per example, (B,)
    assert loss.tolist() == [-0.5, 0.0]      # zero on the misclassified second example
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "ce", "dlr", "get_loss", "redlr"]


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example: ``-log softmax(logits)[y]``."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12)``: negative iff correctly classified.

    :raises ValueError: with fewer than 3 classes (the denominator needs a third logit).
    """
    if logits.shape[-1] < 3:
        raise ValueError(
            f"the DLR and ReDLR losses need at least 3 classes, got {logits.shape[-1]}; "
            "use loss='ce'"
        )
    ordered = logits.sort(dim=-1, descending=True).values
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, y.unsqueeze(-1), float("-inf")).amax(-1)
    return -(true - others) / (ordered[..., 0] - ordered[..., 2] + 1e-12)


def redlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Rectified DLR, ``min(DLR, 0)``: in ``[-1, 0]``, and zero with zero gradient when wrong."""
    value = dlr(logits, y)
    return torch.where(value < 0, value, torch.zeros_like(value))


#: The loss names every attack accepts.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce,
    "dlr": dlr,
    "redlr": redlr,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-example loss called ``name`` (one of :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
