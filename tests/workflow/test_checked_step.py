"""``checked_step``: ``svi.step`` that refuses a non-finite batch or loss before anything moves."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_otmdr import NonFiniteLossError
from pyro_otmdr.workflow.training import checked_step, train


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)


def _svi() -> SVI:
    return SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), loss=Trace_ELBO())


def _state(svi: SVI) -> tuple[dict, dict]:
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, svi.optim.get_state()


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_equal, a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("validation", [True, False])
@pytest.mark.parametrize("poison", ["input", "target"])
def test_a_nan_batch_leaves_parameters_and_optimiser_bit_for_bit(validation, poison):
    pyro.enable_validation(validation)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    svi = _svi()
    for _ in range(3):
        checked_step(svi, x, y)
    params, optim = _state(svi)
    bad = (x.clone(), y.clone())
    bad[0 if poison == "input" else 1][5] = torch.nan
    with pytest.raises(NonFiniteLossError, match=r"nan|NaN"):
        checked_step(svi, *bad)
    assert _equal(_state(svi), (params, optim))
    leaves = [p for _, p in pyro.get_param_store().named_parameters()]
    assert all(p.grad is None or not p.grad.any() for p in leaves)
    checked_step(svi, x, y)  # a good batch after it still trains
    assert not _equal(_state(svi)[0], params)


def test_checked_step_is_svi_step_for_a_finite_batch():
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    losses = []
    for step in (lambda svi: svi.step(x, y), lambda svi: checked_step(svi, x, y)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = _svi()
        losses.append([step(svi) for _ in range(4)])
        losses.append(_state(svi)[0])
    assert losses[0] == losses[2] and _equal(losses[1], losses[3])  # same ops, same order


def test_train_with_skip_nonfinite_counts_the_skipped_batches():
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    svi = _svi()
    nan = torch.full_like(x[:8], torch.nan)
    batches = [(x[:8], y[:8]), (nan, y[8:16]), (x[16:], y[16:])]
    stats = train(svi, lambda epoch: batches, epochs=2, skip_nonfinite=True)
    assert [(s.steps, s.skipped) for s in stats] == [(2, 1), (2, 1)]
