"""Data-parallel OT-MDR: two CPU processes (gloo on 127.0.0.1), per-rank perturbation inside
``no_sync``, one all-reduced descent gradient, parameters identical across ranks."""

import os
import time
from datetime import timedelta

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.nn.parallel import DistributedDataParallel

from pyro_otmdr.model_space.distributed import all_reduce_mean_, free_port
from pyro_otmdr.model_space.optim import OTMDROptimizer, SAMOptimizer
from tests.conftest import EPS32
from tests.model_space.test_elbo import make_model

WORLD = 2
STEPS = 4
TIMEOUT_S = 60


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def rank_data(rank, step):
    gen = torch.Generator().manual_seed(100 * rank + step)
    x = torch.randn(12, 5, generator=gen)
    return x, x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(12, 1, generator=gen)


MODES = ("ddp", "local", "sam_autonormal")


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    torch.set_num_threads(1)
    try:
        result = {
            mode: _train_autonormal_sam(rank)
            if mode == "sam_autonormal"
            else _train_mlp(rank, mode)
            for mode in MODES
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _train_mlp(rank, mode):
    net = make_net()
    model = DistributedDataParallel(net) if mode == "ddp" else net
    no_sync = model.no_sync if mode == "ddp" else None
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = OTMDROptimizer(
        model.named_parameters(), base, rho=0.05, noise_std=1e-3, seed=rank, no_sync=no_sync
    )
    norms = []
    for step in range(STEPS):
        x, y = rank_data(rank, step)
        opt.step(lambda x, y: torch.nn.functional.mse_loss(model(x), y), x, y)
        norms.append(torch.stack(opt.last_step.ascent_norms))
    return {"params": [p.detach().clone() for p in net.parameters()], "norms": norms}


def _train_autonormal_sam(rank):
    """SAM through an ELBOModule: the unperturbed scales' gradient comes from a no_sync pass."""
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(0)
        model = make_model("cpu")
        guide = AutoNormal(model, init_scale=0.1)
        loss_fn = Trace_ELBO()(model, guide)
        y = torch.randn(8, 5, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
        loss_fn(y)  # build the guide's parameters before wrapping
        ddp = DistributedDataParallel(loss_fn)
        base = torch.optim.SGD(ddp.parameters(), lr=0.01)
        opt = SAMOptimizer(ddp.named_parameters(), base, rho=0.1, no_sync=ddp.no_sync)
        pyro.set_rng_seed(1 + rank)
        for _ in range(STEPS):
            opt.step(ddp, y)
        return {"params": [p.detach().clone() for p in loss_fn.parameters()], "norms": []}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks trained, mode by mode (one spawn for every test)."""
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(
        _worker,
        args=(free_port(), str(out)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT_S} s")
    results = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    return {mode: [result[mode] for result in results] for mode in MODES}


def reference_params():
    """One process: the mean over ranks of each rank's local OT-MDR gradient, then SGD."""
    net = make_net()
    opts = [
        OTMDROptimizer(
            net, torch.optim.SGD(net.parameters(), lr=0.1), rho=0.05, noise_std=1e-3, seed=r
        )
        for r in range(WORLD)
    ]
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(STEPS):
        grads = []
        for rank, opt in enumerate(opts):
            x, y = rank_data(rank, step)
            opt.compute_gradients(lambda x, y: torch.nn.functional.mse_loss(net(x), y), x, y)
            grads.append([p.grad.clone() for p in net.parameters()])
        for p, *per_rank in zip(net.parameters(), *grads, strict=True):
            p.grad = sum(per_rank) / WORLD
        sgd.step()
    return [p.detach() for p in net.parameters()]


def test_ddp_keeps_ranks_identical_with_per_rank_perturbations(ranks):
    ranks = ranks["ddp"]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)
    # each rank perturbed with its local gradient: the ascent norms differ (synced ones would not)
    for norms0, norms1 in zip(ranks[0]["norms"], ranks[1]["norms"], strict=True):
        assert not torch.allclose(norms0, norms1)
    # and the result is the mean over ranks of the per-rank OT-MDR gradients; eps-derived: the
    # same float32 ops in other processes (one thread each), 4 steps of 3 passes, eps times ~80
    for got, expected in zip(ranks[0]["params"], reference_params(), strict=True):
        torch.testing.assert_close(got, expected, rtol=80 * EPS32, atol=8 * EPS32)


def test_without_all_reduce_the_ranks_drift_apart(ranks):
    ranks = ranks["local"]
    assert not all(
        torch.equal(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True)
    )


def test_sam_with_unperturbed_scales_stays_identical_across_ranks(ranks):
    ranks = ranks["sam_autonormal"]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)


def test_all_reduce_mean_is_a_no_op_without_a_process_group():
    t = [torch.ones(2), torch.zeros(3)]
    all_reduce_mean_(t)
    assert torch.equal(t[0], torch.ones(2)) and torch.equal(t[1], torch.zeros(3))
