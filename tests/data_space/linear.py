"""Shared by the attack tests: a linear softmax classifier with hand-derivable input gradients,
and a small Bayesian MLP on the same data under each guide family."""

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr.bayes import AutoDeltaEnsemble, EnsembleELBO, bayesian

NUM_CLASSES, DIM, N = 4, 6, 40


def linear_problem(device: str = "cpu", seed: int = 0, low: float = 0.3, high: float = 0.7):
    """``(net, x, y)``: logits ``W x + b`` in float64, ``x`` uniform in ``[low, high]^DIM``.

    Labels are the net's own argmax except for every 5th example (misclassified on purpose).
    """
    generator = torch.Generator().manual_seed(seed)
    net = torch.nn.Linear(DIM, NUM_CLASSES).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(NUM_CLASSES, DIM, generator=generator, dtype=torch.float64))
        net.bias.copy_(torch.randn(NUM_CLASSES, generator=generator, dtype=torch.float64) * 0.1)
    x = low + (high - low) * torch.rand(N, DIM, generator=generator, dtype=torch.float64)
    y = net(x).argmax(-1).detach()
    y[::5] = (y[::5] + 1) % NUM_CLASSES
    return net.to(device), x.to(device), y.to(device)


def ce_gradients(net: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x CE(W x + b, y) = W^T (softmax(W x + b) - onehot(y))``, by hand."""
    with torch.no_grad():
        probs = torch.softmax(x @ net.weight.T + net.bias, dim=-1)
        onehot = torch.nn.functional.one_hot(y, NUM_CLASSES).to(probs.dtype)
        return (probs - onehot) @ net.weight


GUIDES = {
    "delta": lambda model: AutoDelta(model),
    "ensemble": lambda model: AutoDeltaEnsemble(model, num_members=3),
    "normal": lambda model: AutoNormal(model, init_scale=0.05),
}


def fit_bayesian(kind: str, device: str = "cpu"):
    """A Bayesian MLP on the linear problem, its guide after a few SVI steps, and the data."""
    _, x, y = linear_problem(device)
    x = x.float()
    net = torch.nn.Sequential(
        torch.nn.Linear(DIM, 16), torch.nn.ReLU(), torch.nn.Linear(16, NUM_CLASSES)
    )
    model = bayesian(net, num_data=len(x)).to(device)
    guide = GUIDES[kind](model)
    loss = EnsembleELBO(Trace_ELBO()) if kind == "ensemble" else Trace_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    for _ in range(30):
        svi.step(x, y)
    return model, guide, x, y
