"""Mixed precision: bf16 autocast (CPU and GPU) and fp16 with a gradient scaler."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule

from pyro_otmdr import OTMDR
from pyro_otmdr.model_space.optim import OTMDROptimizer
from tests.conftest import CUDA


def problem(device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 16, generator=gen)
    y = (x[:, :4].sum(1) > 0).long()
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    return net.to(device), x.to(device), y.to(device)


def closure_for(net, device, dtype):
    def closure(x, y):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        return torch.nn.functional.cross_entropy(logits.float(), y)

    return closure


def one_step(device, dtype, scaler=None):
    net, x, y = problem(device)
    opt = OTMDROptimizer(
        net, torch.optim.SGD(net.parameters(), lr=0.1), rho=0.05, seed=0, grad_scaler=scaler
    )
    opt.step(closure_for(net, device, dtype), x, y)
    return net, opt


def largest_step(device, reference):
    """How far the fp32 step moved any weight (~0.012 here)."""
    start, _, _ = problem(device)
    pairs = zip(start.parameters(), reference.parameters(), strict=True)
    moves = [(q - p).detach().abs().max() for p, q in pairs]
    return float(max(moves))


def run_bf16(device):
    reference, _ = one_step(device, None)
    net, _ = one_step(device, torch.bfloat16)
    # eps-derived: bf16 eps (2^-7) times ~32 of the step (inputs, weights and activations of a
    # 16-32-2 net rounded to bf16, and the ascent direction with them); a wrong step is off by
    # about the step itself
    tol = 32 * torch.finfo(torch.bfloat16).eps * largest_step(device, reference)
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert p.dtype == torch.float32  # master weights stay fp32
        torch.testing.assert_close(p, q, rtol=0, atol=tol)
    net, x, y = problem(device)
    opt = OTMDROptimizer(net, torch.optim.SGD(net.parameters(), lr=0.2), rho=0.05, n_particles=2)
    closure = closure_for(net, device, torch.bfloat16)
    losses = [opt.step(closure, x, y) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]


def test_bf16_autocast_on_cpu():
    run_bf16("cpu")


@pytest.mark.cuda
@CUDA
def test_bf16_autocast_on_gpu():
    run_bf16("cuda")


class Regression(PyroModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(16, 1)

    def forward(self, x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(16, device=x.device), 1.0).to_event(1))
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            mean = (x @ w.unsqueeze(-1)).squeeze(-1)
        with pyro.plate("data", size=256, subsample_size=len(x)):
            pyro.sample("obs", dist.Normal(mean.float(), 1.0), obs=y)


def test_bf16_autocast_in_a_pyro_model_with_svi():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    y = x[:, 0] * 2.0
    model = Regression()
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=OTMDR(Trace_ELBO(), rho=0.01))
    losses = [svi.step(x, y) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    assert guide.locs.w.dtype == torch.float32


def run_fp16_with_scaler(device):
    reference, _ = one_step(device, None)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    net, opt = one_step(device, torch.float16, scaler)
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        # unscaled once, correctly: 5e-3 is ~40% of the largest step (0.012), so a step left
        # scaled (1024x) or unscaled twice (1/1024x) fails; fp16 rounding is ~2% of the step
        torch.testing.assert_close(p, q, rtol=0, atol=5e-3)
    assert opt.skipped_steps == 0 and scaler.get_scale() == 2.0**10

    # a scale that overflows fp16: the step is skipped, parameters intact, the scale backs off
    net, x, y = problem(device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**60)
    opt = OTMDROptimizer(
        net, torch.optim.SGD(net.parameters(), lr=0.1), rho=0.05, grad_scaler=scaler
    )
    before = [p.detach().clone() for p in net.parameters()]
    closure = closure_for(net, device, torch.float16)
    assert opt.step(closure, x, y) is None
    assert opt.skipped_steps == 1 and scaler.get_scale() == 2.0**59
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)
        assert p.grad is None or not p.grad.any()
    losses = [opt.step(closure, x, y) for _ in range(60)]
    assert opt.skipped_steps > 1 and losses[-1] is not None
    assert losses[-1] < 0.8 * next(loss for loss in losses if loss is not None)


def test_fp16_with_a_grad_scaler_on_cpu():
    run_fp16_with_scaler("cpu")


@pytest.mark.cuda
@CUDA
def test_fp16_with_a_grad_scaler_on_gpu():
    run_fp16_with_scaler("cuda")
