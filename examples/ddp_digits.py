"""Data-parallel OT-MDR: an AutoNormal Bayesian MLP on digits, one process per rank (DDP, gloo).

Every rank trains on its own shard of each epoch's minibatches. The loss is Pyro's ``ELBOModule``
(``Trace_ELBO()(model, guide)`` with module-local parameters) wrapped in
``DistributedDataParallel``; :class:`~pyro_otmdr.model_space.optim.OTMDROptimizer` runs the
ascent passes
inside ``no_sync()`` (each rank perturbs with its local gradient) and DDP all-reduces the descent
gradient, so the ranks stay identical. Rank 0 evaluates, prints and writes the checkpoint.

Usage (CPU, loopback only)::

    torchrun --standalone --nproc_per_node=2 examples/ddp_digits.py --epochs 20
    torchrun --standalone --nproc_per_node=2 examples/ddp_digits.py --checkpoint runs/ddp.pt
    python examples/ddp_digits.py --epochs 20                                     # one process
"""

import argparse
import os
from datetime import timedelta

import pyro
import torch
import torch.distributed as dist
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value
from torch.nn.parallel import DistributedDataParallel

from pyro_otmdr.bayes.bnn import bayesian
from pyro_otmdr.evaluation import evaluate
from pyro_otmdr.model_space.optim import OTMDROptimizer
from pyro_otmdr.workflow.checkpoint import load_checkpoint, save_checkpoint
from pyro_otmdr.workflow.data import load_dataset
from pyro_otmdr.workflow.models import Normalize, build_model


def setup() -> tuple[int, int]:
    """Join the process group that torchrun describes; one process without it."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    return dist.get_rank(), dist.get_world_size()


def build(x: torch.Tensor, y: torch.Tensor, seed: int, normalization: tuple):
    """The Bayesian MLP, its AutoNormal guide and the ELBO as a module (same on every rank)."""
    pyro.set_rng_seed(seed)
    net = build_model("mlp", num_classes=10, in_features=64, hidden=(128,))
    normalize = Normalize(*normalization)  # the data stay in [0, 1]
    model = bayesian(net, num_data=len(x), prior_scale=1.0, input_transform=normalize)
    values = model.initial_values()
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=values), init_scale=1e-3)
    loss_fn = Trace_ELBO()(model, guide)
    loss_fn(x[:2], y[:2])  # the guide builds its parameters before DDP and the optimiser see them
    return model, guide, loss_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--rho", type=float, default=0.005)
    parser.add_argument("--particles", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="save here each epoch; resume from it")
    args = parser.parse_args()

    pyro.settings.set(module_local_params=True)
    torch.set_num_threads(1)
    rank, world = setup()
    splits = load_dataset("digits", seed=args.seed)
    x, y = splits.train.tensors
    model, guide, loss_fn = build(x, y, args.seed, splits.normalization)
    ddp = DistributedDataParallel(loss_fn) if world > 1 else loss_fn
    base = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    opt = OTMDROptimizer(
        ddp.named_parameters(),
        base,
        rho=args.rho,
        n_particles=args.particles,
        seed=args.seed + rank,  # every rank splits and perturbs on its own
        no_sync=ddp.no_sync if world > 1 else None,
    )
    start, step = 0, 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        ckpt = load_checkpoint(args.checkpoint, optim=opt, module=loss_fn, param_store=False)
        start, step = ckpt.epoch + 1, ckpt.step
    pyro.set_rng_seed(args.seed + 1000 * start + rank)  # each rank draws its own guide noise

    for epoch in range(start, args.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed + epoch))
        per_step = args.batch_size * world
        total = 0.0
        for i in range(0, len(order) - per_step + 1, per_step):  # equal step counts on all ranks
            idx = order[i + rank * args.batch_size : i + (rank + 1) * args.batch_size]
            total += opt.step(ddp, x[idx], y[idx])
            step += 1
        if rank == 0:
            print(f"epoch {epoch + 1:3d}  rank-0 robust loss {total:10.1f}  steps {step}")
            if args.checkpoint:
                save_checkpoint(
                    args.checkpoint, optim=opt, module=loss_fn, epoch=epoch, step=step,
                    param_store=False,
                )  # fmt: skip

    if rank == 0:
        model.eval()
        metrics = evaluate(model, guide, *splits.test.tensors, num_samples=32).metrics
        print(f"{world} rank(s): test accuracy {metrics['accuracy']:.4f}  NLL {metrics['nll']:.4f}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
