"""Median milliseconds per training step of plain SVI, SAM and OT-MDR, measured side by side.

For each guide (AutoDelta, AutoNormal, AutoDeltaEnsemble of M members) one MLP BNN on
digits-shaped data is trained by every method in turn, round after round (interleaved, so the
machine's load falls on all methods alike); the script prints the median ms/step of each, the
ratios to SAM and plain SVI, and for the ensemble the ratio to M AutoDelta steps of that method.

Usage::

    python benchmarks/step_time.py                 # defaults: 64-512-512-10 MLP, batch 128
    python benchmarks/step_time.py --hidden 128 --rounds 5 --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn import PyroModule, PyroSample

from pyro_otmdr import OTMDR, SAM, AutoDeltaEnsemble, EnsembleELBO


class MLPBNN(PyroModule):
    """An MLP with standard-normal priors on every weight and a categorical likelihood."""

    def __init__(self, sizes: list[int], num_data: int) -> None:
        super().__init__()
        self.num_data = num_data
        layers = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layer = PyroModule[torch.nn.Linear](fan_in, fan_out)
            layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand([fan_out, fan_in]).to_event(2))
            layer.bias = PyroSample(dist.Normal(0.0, 1.0).expand([fan_out]).to_event(1))
            layers.append(layer)
        self.layers = PyroModule[torch.nn.ModuleList](layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        logits = self.layers[-1](x)
        with pyro.plate("data", size=self.num_data, subsample_size=len(logits)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits


def methods(rho: float, ensemble: bool) -> dict[str, Callable[[], pyro.infer.ELBO]]:
    return {
        "svi": (lambda: EnsembleELBO(Trace_ELBO())) if ensemble else Trace_ELBO,
        "sam": lambda: SAM(Trace_ELBO(), rho=rho),
        "otmdr_k1": lambda: OTMDR(Trace_ELBO(), rho=rho, n_particles=1),
        "otmdr_k2": lambda: OTMDR(Trace_ELBO(), rho=rho, n_particles=2),
    }


def time_steps(svi: SVI, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> float:
    """Milliseconds per step over ``steps`` steps on random minibatches."""
    idx = [torch.randint(0, len(x), (batch,), device=x.device) for _ in range(steps)]
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in idx:
        svi.step(x[i], y[i])
    if x.is_cuda:
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / steps


def bench_guide(make_guide: Callable, args: argparse.Namespace) -> dict[str, float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    device = torch.device(args.device)
    num_data = 4096
    x = torch.randn(num_data, 64, device=device)
    y = torch.randint(0, 10, (num_data,), device=device)
    model = MLPBNN([64, *[args.hidden] * args.layers, 10], num_data).to(device)
    guide = make_guide(model)
    runners = {
        name: SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=make())
        for name, make in methods(args.rho, isinstance(guide, AutoDeltaEnsemble)).items()
    }
    for svi in runners.values():  # warm-up: guide set-up, allocator, caches
        time_steps(svi, x, y, 3, args.batch)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, svi in runners.items():
            samples[name].append(time_steps(svi, x, y, args.steps, args.batch))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved blocks per method")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--members", type=int, default=3, help="AutoDeltaEnsemble size")
    args = parser.parse_args()
    print(
        f"MLP BNN 64-{'-'.join([str(args.hidden)] * args.layers)}-10, batch {args.batch}, "
        f"device {args.device}, torch {torch.__version__}, pyro {pyro.__version__}, "
        f"threads {torch.get_num_threads()}; median of {args.rounds} blocks of {args.steps} steps"
    )
    m = args.members
    guides = {
        "AutoDelta": AutoDelta,
        "AutoNormal": AutoNormal,
        f"Ensemble{m}": lambda model: AutoDeltaEnsemble(model, num_members=m),
    }
    print(f"{'guide':<11}{'method':<10}{'ms/step':>9}{'/ SAM':>8}{'/ SVI':>8}{'/ M x Delta':>12}")
    delta: dict[str, float] = {}
    for label, make_guide in guides.items():
        times = bench_guide(make_guide, args)
        delta = delta or times
        for name, ms in times.items():
            per_member = f"{ms / (m * delta[name]):>12.2f}" if label.startswith("Ens") else ""
            print(
                f"{label:<11}{name:<10}{ms:>9.2f}"
                f"{ms / times['sam']:>8.2f}{ms / times['svi']:>8.2f}{per_member}"
            )


if __name__ == "__main__":
    main()
