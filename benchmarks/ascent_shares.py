"""Where an ascent move goes: each tensor's share of it, and the prior's share of the gradient.

Trains a point estimate on digits (the default MLP, adversarial training at eps 0.1 by default,
or plain SVI with ``--data-robust none``), then, on training batches, takes the gradient of the
loss that OT-MDR ascends (Pyro's: the ``N(0, s^2)`` prior's term ``theta / s^2`` plus ``N`` times
the batch's mean likelihood gradient, at the adversarial inputs of AT) and prints, per tensor:
its norm, its share of the squared norm of a global-geometry move, the move relative to its own norm
under the global and the layer geometry at the same rho; and the cosine between the gradient
with and without the prior term, with the prior term's share of the gradient norm.

Command line::

    python benchmarks/ascent_shares.py [--epochs 30] [--rho 0.05] [--data-robust at]
"""

from __future__ import annotations

import argparse
import statistics

import pyro
import torch

from pyro_otmdr.experiments import ExperimentConfig, build_experiment, train_experiment


def _gradient(experiment, x, y) -> dict[str, torch.Tensor]:
    """The gradient of the experiment's inner loss (no OT-MDR) on one batch, per parameter."""
    store = pyro.get_param_store()
    for name in store:
        store.get_param(name).unconstrained().grad = None
    loss = experiment.loss.elbo if hasattr(experiment.loss, "engine") else experiment.loss
    loss.loss_and_grads(experiment.model, experiment.guide, x, y)
    grads = {}
    for name in store:
        leaf = store.get_param(name).unconstrained()
        grads[name] = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad.clone()
        leaf.grad = None
    return grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--data-robust", default="at")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = ExperimentConfig(
        guide="delta",
        method="svi",
        data_robust=args.data_robust,
        epochs=args.epochs,
        seed=args.seed,
    )
    experiment = build_experiment(config)
    train_experiment(experiment, progress=False)
    store = pyro.get_param_store()
    values = {name: store[name].detach() for name in store}
    shares, global_rel, layer_rel, cosines, prior_shares = {}, {}, {}, [], []
    for index, (x, y) in enumerate(experiment.train_batches(epoch=0)):
        if index == args.batches:
            break
        grads = _gradient(experiment, x, y)
        prior = {n: values[n] / config.prior_scale**2 for n in grads}
        data = {n: grads[n] - prior[n] for n in grads}
        total = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        flat = torch.cat([g.flatten() for g in grads.values()])
        flat_data = torch.cat([g.flatten() for g in data.values()])
        cosines.append(float(flat @ flat_data / (flat.norm() * flat_data.norm())))
        prior_norm = torch.sqrt(sum(p.pow(2).sum() for p in prior.values()))
        prior_shares.append(float(prior_norm / total))
        for name, g in grads.items():
            move = args.rho * g.norm() / total  # the global move's size in this tensor
            shares.setdefault(name, []).append(float(g.pow(2).sum() / total**2))
            size = values[name].norm()
            global_rel.setdefault(name, []).append(float(move / size) if size > 0 else float("nan"))
            layer_rel.setdefault(name, []).append(args.rho if size > 0 else 0.0)
    print(
        f"digits MLP, AutoDelta, {args.data_robust} for {args.epochs} epochs, seed {args.seed}; "
        f"rho {args.rho}; mean over {args.batches} training batches"
    )
    print(f"{'tensor':<28}{'norm':>9}{'share of |e|^2':>15}{'global |e|/|w|':>16}{'layer':>8}")
    for name in shares:
        print(
            f"{name.split('.', 1)[1]:<28}{float(values[name].norm()):>9.2f}"
            f"{statistics.fmean(shares[name]):>15.1%}{statistics.fmean(global_rel[name]):>16.2%}"
            f"{statistics.fmean(layer_rel[name]):>8.1%}"
        )
    print(
        f"cosine(gradient, gradient without the prior term) {statistics.fmean(cosines):.4f}; "
        f"the prior term's norm is {statistics.fmean(prior_shares):.1%} of the gradient's"
    )


if __name__ == "__main__":
    main()
