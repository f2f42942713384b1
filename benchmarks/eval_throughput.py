"""Throughput and peak memory of ``pyro_otmdr.evaluation.evaluate``: 8 versus 64 posterior draws.

An ``AutoNormal`` guide over a Bayesian MLP (standard-normal priors on every weight) is evaluated
on synthetic inputs; the two draw counts run interleaved (8, 64, 8, 64, ...) so that drift of a
shared machine hits both alike, and the table shows medians over the repetitions. Throughput is
``test points x draws / second`` of one whole ``evaluate`` call (metrics, temperature-free).

Peak memory is the growth of memory during one ``evaluate`` call over what was in use just before:

* CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` after
  ``torch.cuda.reset_peak_memory_stats()``, i.e. the peak of live tensors of the caching allocator.
* CPU: the peak resident set size of the process minus the resident set size before the call.
  Linux keeps the peak (``VmHWM`` in ``/proc/self/status``) and resets it to the current RSS
  when ``5`` is written to ``/proc/self/clear_refs``; so each call is bracketed by a reset and a
  read. This counts every allocation of the process (torch's CPU allocator has no statistics of
  its own; ``tracemalloc`` does not see torch tensors) and what the OS really had to provide.
  Before each call ``malloc_trim(0)`` (glibc) hands the memory that the C allocator kept from
  earlier calls back to the OS, so the call has to obtain its working set again and the growth
  counts it; without glibc the numbers are a lower bound. Where ``clear_refs`` is unavailable
  the script reports ``nan``.

What may grow with the draws are the summaries that ``evaluate`` keeps by design: the per-draw
log-likelihood (float32) and sampled label (int64) of every test point, 12 bytes per point and
draw (56 extra draws x 4096 points = 2.6 MiB in the default setting); the table prints them
as ``kept MiB``.

Usage::

    .venv/bin/python benchmarks/eval_throughput.py            # CUDA when available, else CPU
    .venv/bin/python benchmarks/eval_throughput.py --device cpu --reps 3 --n-test 2048

CPU runs use one torch thread by default (``--threads``): on a small machine shared with other
jobs, two intra-op threads made single calls up to 7x slower at random, which no median hides.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import statistics
import time
from itertools import pairwise
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

from pyro_otmdr.evaluation import evaluate

DRAWS = (8, 64)


class MLPBNN(PyroModule):
    """``inputs -> hidden -> hidden -> classes`` ReLU MLP with N(0, 1) priors on all weights."""

    def __init__(self, inputs: int, hidden: int, classes: int, num_data: int, device) -> None:
        super().__init__()
        self.num_data = num_data
        sizes = [inputs, hidden, hidden, classes]
        zero = torch.zeros((), device=device)
        self.layers = PyroModule[torch.nn.ModuleList](
            [PyroModule[torch.nn.Linear](a, b, device=device) for a, b in pairwise(sizes)]
        )
        for layer, (a, b) in zip(self.layers, pairwise(sizes), strict=True):
            layer.weight = PyroSample(dist.Normal(zero, 1.0 / a**0.5).expand([b, a]).to_event(2))
            layer.bias = PyroSample(dist.Normal(zero, 1.0).expand([b]).to_event(1))

    def forward(self, x, y=None):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        logits = self.layers[-1](x)
        with pyro.plate("data", size=self.num_data, subsample_size=x.shape[0]):
            return pyro.sample("obs", dist.Categorical(logits=logits), obs=y)


class PeakMemory:
    """Peak memory growth of a block, in MiB, on CUDA or (Linux) for the whole process."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clear_refs = Path("/proc/self/clear_refs")

    def __enter__(self) -> PeakMemory:
        self.peak_mib = float("nan")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            _malloc_trim()
            try:
                self.clear_refs.write_text("5")
                self.start = _status_kib("VmRSS") * 1024
            except OSError:
                self.start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.start is not None:
            peak = _status_kib("VmHWM") * 1024
        else:
            return
        self.peak_mib = (peak - self.start) / 2**20


def _malloc_trim() -> None:
    """Return the C allocator's free memory to the OS (glibc only; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _setup(args, device):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(args.n_test, args.inputs, device=device)
    y = torch.randint(0, args.classes, (args.n_test,), device=device)
    model = MLPBNN(args.inputs, args.hidden, args.classes, args.n_test, device)
    guide = AutoNormal(model, init_scale=0.05)
    guide(x[:2], y[:2])  # create the guide's parameters on the device
    return model, guide, x, y


def _time_one(model, guide, x, y, num_samples, batch_size, device):
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        evaluate(model, guide, x, y, num_samples=num_samples, batch_size=batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-test", type=int, default=4096)
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable on shared CPUs)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, guide, x, y = _setup(args, device)
    _time_one(model, guide, x, y, DRAWS[0], args.batch_size, device)  # warm-up
    results = {d: {"seconds": [], "peak": []} for d in DRAWS}
    for _ in range(args.reps):
        for draws in DRAWS:
            seconds, peak = _time_one(model, guide, x, y, draws, args.batch_size, device)
            results[draws]["seconds"].append(seconds)
            results[draws]["peak"].append(peak)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"n_test={args.n_test} mlp={args.inputs}-{args.hidden}-{args.hidden}-{args.classes} "
        f"batch_size={args.batch_size} reps={args.reps} (interleaved; medians)"
    )
    print(f"{'draws':>6} {'seconds':>9} {'points*draws/s':>15} {'peak MiB':>9} {'kept MiB':>9}")
    rows = {}
    for draws in DRAWS:
        seconds = statistics.median(results[draws]["seconds"])
        peak = statistics.median(results[draws]["peak"])
        rows[draws] = (seconds, args.n_test * draws / seconds, peak)
        kept = draws * args.n_test * 12 / 2**20  # float32 log-lik + int64 label per point
        print(f"{draws:>6} {seconds:>9.3f} {rows[draws][1]:>15,.0f} {peak:>9.1f} {kept:>9.1f}")
    (s8, t8, m8), (s64, t64, m64) = rows[DRAWS[0]], rows[DRAWS[1]]
    print(
        f"ratio 64/8: time {s64 / s8:.2f}x (draws 8.00x), throughput {t64 / t8:.2f}x, "
        f"peak memory {m64 / m8:.2f}x"
    )


if __name__ == "__main__":
    main()
