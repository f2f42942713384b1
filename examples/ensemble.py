"""OT-MDR for a deep ensemble (a uniform mixture of Diracs): an AutoDeltaEnsemble guide.

Every ``svi.step`` moves every member, each with its own particles, batch splits and gradient
norm; prediction averages the members' probabilities. Digits and MLP members out of the box; the
paper's CIFAR-10 setting (five ResNet-10s, SGD with momentum, rho 0.05, 200 epochs; a GPU) with
``--cifar10``. ``--baseline`` trains the same ensemble with the plain ELBO instead.

Usage::

    python examples/ensemble.py [--members 5] [--epochs 30] [--baseline]
    python examples/ensemble.py --cifar10 --data-dir data [--download] --epochs 200
"""

import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import init_to_value

from pyro_otmdr import OTMDR, AutoDeltaEnsemble, EnsembleELBO, evaluate
from pyro_otmdr.bayes.bnn import bayesian
from pyro_otmdr.workflow.data import load_dataset
from pyro_otmdr.workflow.models import Normalize, build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar10", action="store_true", help="CIFAR-10 and ResNet-10 members")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rho", type=float, default=0.05, help="the paper's CIFAR-10 radius")
    parser.add_argument("--baseline", action="store_true", help="plain deep ensemble (no OT-MDR)")
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

        def new_net():
            return build_model("resnet10", num_classes=10)
    else:
        splits = load_dataset("digits", seed=args.seed)

        def new_net():
            return build_model("mlp", num_classes=10, in_features=64, hidden=(128,))

    num_data = len(splits.train)
    normalize = Normalize(*splits.normalization)  # the data stay in [0, 1]
    model = bayesian(new_net(), num_data=num_data, input_transform=normalize).to(args.device)
    # Each member starts at a fresh network initialisation of its own.
    starts = [bayesian(new_net(), num_data=num_data).initial_values() for _ in range(args.members)]
    inits = [init_to_value(values={k: v.to(args.device) for k, v in s.items()}) for s in starts]
    guide = AutoDeltaEnsemble(model, num_members=args.members, init_loc_fn=inits)

    # The ELBO sums over the training set, so SGD's usual per-example rate is divided by N.
    optimizer, optim_args = torch.optim.SGD, {"lr": 0.1 / num_data, "momentum": 0.9}
    if not args.cifar10:
        optimizer, optim_args = torch.optim.Adam, {"lr": 1e-2}
    scheduler = pyro.optim.CosineAnnealingLR(
        {"optimizer": optimizer, "optim_args": optim_args, "T_max": args.epochs}
    )
    # EnsembleELBO / OTMDR run once per member, so one step trains every member.
    loss = EnsembleELBO(Trace_ELBO()) if args.baseline else OTMDR(Trace_ELBO(), rho=args.rho)
    svi = SVI(model, guide, scheduler, loss=loss)

    loader = torch.utils.data.DataLoader(splits.train, batch_size=128, shuffle=True)
    for epoch in range(args.epochs):
        losses = []
        for x, y in loader:
            if len(x) >= 2:  # a step needs two non-empty halves
                losses.append(svi.step(x.to(args.device), y.to(args.device)))
        scheduler.step()
        per_member = sum(losses) / len(losses) / num_data / args.members
        print(f"epoch {epoch + 1}: loss per example and member {per_member:.4f}", flush=True)

    model.eval()
    result = evaluate(model, guide, *as_tensors(splits.test))  # every member once
    print({name: round(value, 4) for name, value in result.metrics.items()})


if __name__ == "__main__":
    main()
