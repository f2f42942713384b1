"""Throughput of the attacks: W-PGD-50 against PGD-50 on the digits test set, in one process.

Both attacks make one gradient pass and one evaluation over the whole set per iterate (the
evaluation of iterate ``t`` is the forward pass of the gradient at ``t``), so W-PGD's extra work
is only its dataset-level normalisation and projection: the goal is a W-PGD / PGD time ratio of
at most 1.10. The two run interleaved (W-PGD, PGD, W-PGD, ...) so that drift of a shared machine
hits both alike; the table shows medians over the repetitions of ``points x iterations / s``.

The network is the zoo's ``cnn`` (:class:`~pyro_otmdr.workflow.models.SmallCNN`, BatchNorm,
in eval mode) behind the digits normalisation, on 1x8x8 images in ``[0, 1]``; its weights are
random (throughput does not depend on training). ``--channels`` widens it (a bigger CNN on a GPU).

Usage::

    .venv/bin/python benchmarks/attack_throughput.py                    # CUDA when available
    .venv/bin/python benchmarks/attack_throughput.py --device cpu --reps 3 --threads 1
    .venv/bin/python benchmarks/attack_throughput.py --device cuda --channels 128,256,512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_otmdr.attacks import pgd, w_pgd
from pyro_otmdr.workflow.data import load_dataset
from pyro_otmdr.workflow.models import Normalize, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(attack, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    attack()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--channels", default="32,64,128", help="the CNN's widths")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    splits = load_dataset("digits", seed=0, as_images=True)
    x, y = (t.to(device) for t in splits.test.tensors)
    channels = tuple(int(c) for c in args.channels.split(","))
    net = build_model("cnn", 10, in_channels=1, channels=channels)
    model = torch.nn.Sequential(Normalize(*splits.normalization), net).to(device).eval()
    common = dict(steps=args.steps, batch_size=args.batch_size)
    attacks = {
        "W-PGD": lambda: w_pgd(model, x, y, delta=args.budget, **common),
        "PGD": lambda: pgd(model, x, y, eps=args.budget, random_start=False, **common),
    }
    for attack in attacks.values():  # warm-up
        attack()
    times: dict[str, list[float]] = {name: [] for name in attacks}
    for _ in range(args.reps):
        for name, attack in attacks.items():
            times[name].append(_time(attack, device))
    work = len(x) * args.steps
    print(f"digits test set: {len(x)} points, {args.steps} iterates, budget {args.budget}, "
          f"cnn {channels}, {device}, {args.threads} thread(s), median of {args.reps}")  # fmt: skip
    print("| attack | seconds | points x iterations / s |")
    print("|---|---|---|")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"| {name}-{args.steps} | {seconds:.3f} | {work / seconds:,.0f} |")
    print(f"W-PGD / PGD time ratio: {medians['W-PGD'] / medians['PGD']:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
