"""The attack losses against hand computations: CE, DLR, ReDLR (value and gradient)."""

import pytest
import torch

from pyro_otmdr.attacks import ce, dlr, redlr
from pyro_otmdr.data_space.losses import get_loss

LOGITS = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 1.0, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 0])


def test_dlr_by_hand():
    # row 0 correct: -(3 - 1) / (3 - 0); row 1 wrong: -(0.5 - 2) / (2 - 0.5)
    expected = torch.tensor([-2.0 / 3.0, 1.5 / 1.5], dtype=torch.float64)
    assert torch.allclose(dlr(LOGITS, LABELS), expected)
    assert torch.allclose(redlr(LOGITS, LABELS), torch.tensor([-2.0 / 3.0, 0.0]).double())


def test_ce_by_hand():
    expected = -torch.log_softmax(LOGITS, -1)[:, 0]
    assert torch.allclose(ce(LOGITS, LABELS), expected)


def test_redlr_gives_misclassified_examples_zero_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(redlr(logits, LABELS).sum(), logits)
    assert torch.count_nonzero(grad[1]) == 0
    assert torch.count_nonzero(grad[0]) > 0


@pytest.mark.parametrize("loss", ["dlr", "redlr"])
def test_dlr_needs_three_classes(loss):
    with pytest.raises(ValueError, match="at least 3 classes"):
        get_loss(loss)(torch.zeros(2, 2), torch.tensor([0, 1]))


def test_unknown_loss_names_the_allowed_ones():
    with pytest.raises(ValueError, match="ce, dlr, redlr"):
        get_loss("hinge")
