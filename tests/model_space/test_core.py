import pytest
import torch

from pyro_otmdr.model_space.core import (
    add_gaussian_noise_,
    ascend_,
    global_norm,
    restore_,
    snapshot,
)


def test_global_norm_is_one_norm_over_all_tensors():
    tensors = [torch.tensor([3.0]), torch.tensor([[4.0, 12.0]])]
    assert global_norm(tensors).item() == pytest.approx(13.0)


def test_global_norm_needs_a_tensor():
    with pytest.raises(ValueError, match="at least one"):
        global_norm([])


def test_ascend_moves_by_radius_along_normalised_gradient():
    params = [torch.zeros(1), torch.zeros(2)]
    grads = [torch.tensor([3.0]), torch.tensor([0.0, 4.0])]
    norm = ascend_(params, grads, radius=0.5)
    assert norm.item() == pytest.approx(5.0)
    torch.testing.assert_close(params[0], torch.tensor([0.3]))
    torch.testing.assert_close(params[1], torch.tensor([0.0, 0.4]))


def test_ascend_with_zero_gradient_stays_put():
    params = [torch.ones(3)]
    ascend_(params, [torch.zeros(3)], radius=1.0)
    torch.testing.assert_close(params[0], torch.ones(3))


def test_noise_has_requested_std_and_follows_generator():
    a, b = [torch.zeros(100_000)], [torch.zeros(100_000)]
    add_gaussian_noise_(a, 0.1, torch.Generator().manual_seed(3))
    add_gaussian_noise_(b, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0])
    assert a[0].std().item() == pytest.approx(0.1, rel=0.02)


def test_zero_noise_draws_nothing():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    add_gaussian_noise_([torch.zeros(3)], 0.0, gen)
    assert torch.equal(gen.get_state(), state)


def test_negative_noise_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        add_gaussian_noise_([torch.zeros(3)], -1.0)


def test_restore_is_bit_exact_after_moves():
    params = [torch.randn(5, requires_grad=True), torch.randn(2, 3, requires_grad=True)]
    before = [p.detach().clone() for p in params]
    saved = snapshot(params)
    ascend_(params, [torch.randn(5), torch.randn(2, 3)], radius=0.37)
    add_gaussian_noise_(params, 0.01, torch.Generator().manual_seed(1))
    restore_(params, saved)
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)
