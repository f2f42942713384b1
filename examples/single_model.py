"""OT-MDR for a single model (a Dirac center): an AutoDelta guide, i.e. MAP weights.

A plain Pyro loop: ``SVI`` with ``OTMDR(Trace_ELBO())`` as its loss, a per-epoch cosine learning
rate, and ``evaluate`` at the end. Digits and an MLP out of the box (seconds on a CPU); the paper's
CIFAR-10 setting (ResNet-18, SGD with momentum, rho 0.05, 200 epochs; a GPU) with ``--cifar10``.

Usage::

    python examples/single_model.py [--epochs 30] [--rho 0.05] [--particles 2]
    python examples/single_model.py --cifar10 --data-dir data [--download] --epochs 200
"""

import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, init_to_value

from pyro_otmdr import OTMDR, evaluate
from pyro_otmdr.bayes.bnn import bayesian
from pyro_otmdr.workflow.data import load_dataset
from pyro_otmdr.workflow.models import Normalize, build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar10", action="store_true", help="CIFAR-10 and ResNet-18")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rho", type=float, default=0.05, help="the paper's CIFAR-10 radius")
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def as_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*torch.utils.data.DataLoader(dataset, batch_size=1000), strict=True)
    return torch.cat(xs), torch.cat(ys)


def main() -> None:
    args = parse_args()
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    if args.cifar10:
        splits = load_dataset("cifar10", args.data_dir, args.download)
        net = build_model("resnet18", num_classes=10)
    else:
        splits = load_dataset("digits", seed=args.seed)
        net = build_model("mlp", num_classes=10, in_features=64, hidden=(128,))
    num_data = len(splits.train)
    normalize = Normalize(*splits.normalization)  # the data stay in [0, 1]
    model = bayesian(net, num_data=num_data, input_transform=normalize).to(
        args.device
    )  # N(0, 1) priors: MAP = weight decay
    guide = AutoDelta(model, init_loc_fn=init_to_value(values=model.initial_values()))

    # The ELBO sums over the training set, so SGD's usual per-example rate is divided by N.
    optimizer, optim_args = torch.optim.SGD, {"lr": 0.1 / num_data, "momentum": 0.9}
    if not args.cifar10:
        optimizer, optim_args = torch.optim.Adam, {"lr": 1e-2}
    scheduler = pyro.optim.CosineAnnealingLR(
        {"optimizer": optimizer, "optim_args": optim_args, "T_max": args.epochs}
    )
    loss = OTMDR(Trace_ELBO(), rho=args.rho, n_particles=args.particles, seed=args.seed)
    svi = SVI(model, guide, scheduler, loss=loss)

    loader = torch.utils.data.DataLoader(splits.train, batch_size=128, shuffle=True)
    for epoch in range(args.epochs):
        losses = []
        for x, y in loader:
            if len(x) >= 2:  # a step needs two non-empty halves
                losses.append(svi.step(x.to(args.device), y.to(args.device)))
        scheduler.step()  # one cosine step per epoch
        per_example = sum(losses) / len(losses) / num_data
        print(f"epoch {epoch + 1}: loss per example {per_example:.4f}", flush=True)

    model.eval()  # BatchNorm uses its running statistics
    result = evaluate(model, guide, *as_tensors(splits.test))
    print({name: round(value, 4) for name, value in result.metrics.items()})


if __name__ == "__main__":
    main()
