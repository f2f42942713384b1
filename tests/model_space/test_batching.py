import pytest
import torch

from pyro_otmdr.model_space.batching import batch_size_of, split_in_halves


def test_batch_size_from_first_tensor_argument():
    assert batch_size_of((3, torch.zeros(7, 2)), {"y": torch.zeros(5)}) == 7
    assert batch_size_of((), {"y": torch.zeros(5)}) == 5


def test_no_tensor_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="split_batch"):
        batch_size_of((1, "a"), {})


def test_halves_partition_the_batch_consistently_across_arguments():
    x = torch.arange(10.0).unsqueeze(-1).expand(10, 3)
    y = torch.arange(10)
    (a1, k1), (a2, k2) = split_in_halves((x, 7), {"y": y}, torch.Generator().manual_seed(0))
    assert a1[1] == 7 and a2[1] == 7
    assert len(a1[0]) == 5 and len(a2[0]) == 5
    torch.testing.assert_close(a1[0][:, 0].long(), k1["y"])
    torch.testing.assert_close(a2[0][:, 0].long(), k2["y"])
    assert sorted(torch.cat([k1["y"], k2["y"]]).tolist()) == list(range(10))


def test_odd_batches_give_the_extra_element_to_the_second_half():
    (a1, _), (a2, _) = split_in_halves((torch.arange(5),), {}, torch.Generator().manual_seed(0))
    assert (len(a1[0]), len(a2[0])) == (2, 3)


def test_fresh_permutation_at_each_call():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(64)
    first = split_in_halves((x,), {}, gen)[0][0][0]
    second = split_in_halves((x,), {}, gen)[0][0][0]
    assert not torch.equal(first, second)


@pytest.mark.parametrize("size", [0, 1])
def test_batch_too_small_to_split(size):
    with pytest.raises(ValueError, match="two non-empty halves"):
        split_in_halves((torch.zeros(size, 2),), {}, torch.Generator())
