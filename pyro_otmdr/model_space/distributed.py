"""Data-parallel OT-MDR with ``torch.distributed``: per-rank perturbation, averaged descent.

With ``DistributedDataParallel`` every rank holds the same parameters and its own shard of each
minibatch. An OT-MDR (or SAM) step then runs, on every rank:

1. the ascent passes on halves of the *local* batch inside ``ddp_model.no_sync()`` (forward
   included): each rank perturbs with its own local gradient, with no communication, as the
   usual data-parallel SAM implementations do;
2. the whole local batch's pass at the perturbed parameters outside ``no_sync``: DDP all-reduces
   (averages) this descent gradient, so every rank steps with the same gradient and the
   parameters stay identical.

The perturbations therefore differ from rank to rank, and the result is the mean over ranks of
per-rank OT-MDR gradients, not an OT-MDR gradient of the global batch. Give every rank a
different ``seed`` (e.g. ``seed + rank``) so that splits and noise differ too.

The example runs one process, a group of one; ``torchrun`` starts one per device, each with its
rank and its shard of every batch. Usage::

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from pyro_otmdr import OTMDROptimizer
    from pyro_otmdr.model_space.distributed import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                            rank=0, world_size=1)
    rank = dist.get_rank()
    ddp = DistributedDataParallel(torch.nn.Linear(4, 3))
    base = torch.optim.SGD(ddp.parameters(), lr=0.1)
    opt = OTMDROptimizer(ddp.named_parameters(), base, rho=0.05, seed=rank,
                         no_sync=ddp.no_sync)
    local_batches = [(torch.randn(8, 4), torch.randint(3, (8,))) for _ in range(2)]
    for x, y in local_batches:
        opt.step(lambda x, y: F.cross_entropy(ddp(x), y), x, y)
    dist.destroy_process_group()
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean_", "free_port", "is_distributed"]


def is_distributed() -> bool:
    """Whether a default process group is initialised.

    Usage::

        import torch.distributed as dist
        from pyro_otmdr.model_space.distributed import is_distributed

        rank = dist.get_rank() if is_distributed() else 0
        assert rank == 0                  # one process, no process group
    """
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` over the ranks of the default process group, in place.

    One flat all-reduce for all of them; nothing happens outside a process group.

    Usage::

        import torch
        import torch.nn.functional as F
        from pyro_otmdr.model_space.distributed import all_reduce_mean_

        model = torch.nn.Linear(4, 3)
        F.cross_entropy(model(torch.randn(8, 4)), torch.randint(3, (8,))).backward()
        grads = [p.grad for p in model.parameters()]
        before = [g.clone() for g in grads]
        all_reduce_mean_(grads)           # the mean over the ranks, in place
        assert all(torch.equal(g, b) for g, b in zip(grads, before, strict=True))  # no group here
    """
    if not tensors or not is_distributed():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    torch._foreach_copy_(
        list(tensors),
        [
            c.view_as(t)
            for c, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)
        ],
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now, for ``MASTER_PORT``.

    Usage::

        import torch.distributed as dist
        from pyro_otmdr.model_space.distributed import free_port, is_distributed

        port = free_port()                # for MASTER_PORT, or a tcp:// init_method
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=0, world_size=1)
        assert is_distributed()
        dist.destroy_process_group()
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
