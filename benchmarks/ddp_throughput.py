"""Throughput of data-parallel OT-MDR on this machine: 1 vs 2 DDP ranks (CPU, gloo, loopback).

Each rank runs one thread and takes OT-MDR steps (Pyro ``ELBOModule`` of an AutoNormal Bayesian
MLP 64-128-10 on digits, wrapped in ``DistributedDataParallel``) on its own batch of
``--batch-size`` examples, so the global batch grows with the ranks (weak scaling). Examples/s
counts the examples of all ranks.

Usage::

    python benchmarks/ddp_throughput.py [--steps 60] [--batch-size 64] [--particles 2]
"""

import argparse
import os
import time
from datetime import timedelta

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value
from torch.nn.parallel import DistributedDataParallel

from pyro_otmdr.bayes.bnn import bayesian
from pyro_otmdr.model_space.distributed import free_port
from pyro_otmdr.model_space.optim import OTMDROptimizer
from pyro_otmdr.workflow.data import load_dataset
from pyro_otmdr.workflow.models import build_model

WARMUP = 5


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    pyro.settings.set(module_local_params=True)
    x, y = load_dataset("digits", seed=0).train.tensors
    pyro.set_rng_seed(0)
    model = bayesian(build_model("mlp", num_classes=10, in_features=64, hidden=(128,)),
                     num_data=len(x))  # fmt: skip
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=model.initial_values()))
    loss_fn = Trace_ELBO()(model, guide)
    loss_fn(x[:2], y[:2])
    ddp = DistributedDataParallel(loss_fn)
    opt = OTMDROptimizer(ddp.named_parameters(), torch.optim.Adam(ddp.parameters(), lr=1e-3),
                         rho=0.005, n_particles=args.particles, seed=rank,
                         no_sync=ddp.no_sync)  # fmt: skip
    gen = torch.Generator().manual_seed(rank)
    batches = [torch.randint(len(x), (args.batch_size,), generator=gen) for _ in range(16)]
    for i in range(WARMUP + args.steps):
        if i == WARMUP:
            dist.barrier()
            start = time.perf_counter()
        idx = batches[i % len(batches)]
        opt.step(ddp, x[idx], y[idx])
    dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        with open(out, "w") as f:
            f.write(str(elapsed))
    dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> float:
    out = f"/tmp/ddp_throughput_{os.getpid()}_{world}.txt"
    mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
    with open(out) as f:
        elapsed = float(f.read())
    os.remove(out)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--particles", type=int, default=2)
    args = parser.parse_args()
    print(f"OT-MDR (K={args.particles}) AutoNormal MLP 64-128-10 on digits, DDP gloo on CPU, "
          f"{args.batch_size} examples per rank per step, 1 thread per rank, "
          f"{os.cpu_count()} CPU cores")  # fmt: skip
    print(f"{'ranks':>5}  {'examples/s':>10}  {'ms/step':>8}  {'speed-up':>8}")
    base = None
    for world in (1, 2):
        elapsed = measure(world, args)
        throughput = args.steps * args.batch_size * world / elapsed
        base = base or throughput
        print(f"{world:>5}  {throughput:>10.0f}  {1000 * elapsed / args.steps:>8.1f}  "
              f"{throughput / base:>7.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
