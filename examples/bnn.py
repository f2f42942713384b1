"""OT-MDR for a Bayesian neural network (a diagonal Gaussian center): an AutoNormal guide.

OT-MDR moves the means only; the scales take the gradient at the unperturbed sample. Digits and
an MLP out of the box; the paper's CIFAR-10 BNN setting (a ResNet-10, rho 0.005, batch 1024; a
GPU) with ``--cifar10``. ``--baseline`` trains with the plain ELBO instead.

Usage::

    python examples/bnn.py [--epochs 30] [--rho 0.005] [--particles 2] [--baseline]
    python examples/bnn.py --cifar10 --data-dir data [--download] --epochs 100 --batch-size 1024
"""

import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_otmdr import OTMDR, evaluate
from pyro_otmdr.bayes.bnn import bayesian
from pyro_otmdr.workflow.data import load_dataset
from pyro_otmdr.workflow.models import Normalize, build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar10", action="store_true", help="CIFAR-10 and a ResNet-10")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rho", type=float, default=0.005, help="the paper's BNN radius")
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="plain SVI (no OT-MDR)")
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
        net = build_model("resnet10", num_classes=10)
    else:
        splits = load_dataset("digits", seed=args.seed)
        net = build_model("mlp", num_classes=10, in_features=64, hidden=(128,))
    num_data = len(splits.train)
    normalize = Normalize(*splits.normalization)  # the data stay in [0, 1]
    model = bayesian(net, num_data=num_data, input_transform=normalize).to(
        args.device
    )  # N(0, 1) priors
    # Means start at the network's own initialisation, scales small.
    guide = AutoNormal(
        model, init_loc_fn=init_to_value(values=model.initial_values()), init_scale=1e-3
    )
    scheduler = pyro.optim.CosineAnnealingLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-3 if args.cifar10 else 1e-2},
         "T_max": args.epochs}
    )  # fmt: skip
    loss = (
        Trace_ELBO()
        if args.baseline
        else OTMDR(Trace_ELBO(), rho=args.rho, n_particles=args.particles, seed=args.seed)
    )
    svi = SVI(model, guide, scheduler, loss=loss)

    loader = torch.utils.data.DataLoader(splits.train, batch_size=args.batch_size, shuffle=True)
    for epoch in range(args.epochs):
        losses = []
        for x, y in loader:
            if len(x) >= 2:  # a step needs two non-empty halves
                losses.append(svi.step(x.to(args.device), y.to(args.device)))
        scheduler.step()
        per_example = sum(losses) / len(losses) / num_data
        print(f"epoch {epoch + 1}: negative ELBO per example {per_example:.4f}", flush=True)

    model.eval()
    x_val, y_val = as_tensors(splits.val) if splits.val is not None else (None, None)
    result = evaluate(model, guide, *as_tensors(splits.test), num_samples=32, x_val=x_val,
                      y_val=y_val)  # fmt: skip
    print({name: round(value, 4) for name, value in result.metrics.items()})


if __name__ == "__main__":
    main()
