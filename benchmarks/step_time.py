"""Median milliseconds per training step of plain SVI, SAM and OT-MDR, measured side by side.

For each network (the project's ``mlp`` on digits-shaped vectors and its ``cnn`` on digits-shaped
images, and with ``--models resnet18`` its ResNet-18 on CIFAR-shaped images, all made Bayesian with
:func:`pyro_otmdr.bayes.bayesian`) and each guide (AutoDelta,
AutoNormal, AutoDeltaEnsemble of M members), every method trains the same model in turn, round
after round (interleaved, so the machine's load falls on all methods alike). The script prints the
median ms/step of each and the ratios OT-MDR(K=1)/SAM, SAM/SVI and K=2/K=1. For AutoNormal it also
times OT-MDR(K=1) with the scales' gradient from a whole-batch pass (``k1 whole``, forced by a
custom ``split_batch``), the way every step paid for it before the half-batch identity. With
``--prior both`` every method also runs with the prior ``bayesian()`` built before its fused
:class:`~pyro_otmdr.bayes.priors.IsotropicNormal` (``Normal(0, s).expand(shape).to_event(n)``),
interleaved with the new one, and a ``n/o`` line gives new/old per method.

With ``--engine both`` every method also runs with the step engine's per-pass savings switched off
(``before``: what a step cost before them), interleaved, and an ``n/b`` line gives new/before;
``--engine each`` adds one variant per saving switched off alone (``-logq``, ``-frozen``,
``-served``, ``-device``, listed in ``ENGINE_CHANGES``: the fields of
:class:`~pyro_otmdr.model_space.StepSavings`, switched through each loss's ``engine.savings``) and
an ``n/-X`` line for each: what that one change buys, measured side by side. (A data-robust loss
alone has no step engine: its rows run with the savings of its own attack pass in every variant.)

With ``--jit`` every method also runs over Pyro's ``JitTrace_ELBO`` (``jit``: SAM and OT-MDR
compile their passes, :mod:`pyro_otmdr.model_space.jit`; plain SVI runs Pyro's own compiled
ELBO) next to ``Trace_ELBO`` (``eager``), interleaved round after round in the same process, and a
``j/e`` line gives compiled/eager per method (below 1: what compiling buys). The compiled losses
warm up longer (their first steps trace the graphs and let TorchScript optimise them).

With ``--data-robust at,trades,wdat,armor`` (any of them; none by default, and then the output is
as without the flag) each chosen data-robust loss X (:class:`~pyro_otmdr.AdversarialTraining`,
:class:`~pyro_otmdr.TRADES`, :class:`~pyro_otmdr.WDAT`, :class:`~pyro_otmdr.ARMOR`, PGD of
``--attack-steps`` steps in a ball of ``--eps``) also trains the same model and guide, alone and
under OT-MDR(K=1), interleaved with the methods above. A second table, printed at the end, gives
X/SVI, (k1+X)/X next to k1/SVI (whether OT-MDR adds no more on top of X than on top of plain SVI:
the attack is paid once per step and reused by its passes) and the attacks per step of X and of
k1+X (1, or one per member for the ensemble). The inputs are uniform in [0, 1], the losses' box.
ARMOR's batch loss is not a mean over examples, so under AutoNormal k1+armor gives the scales a
whole-batch pass: compare its (k1+X)/X with ``k1 whole``/SVI rather than k1/SVI.

Usage::

    python benchmarks/step_time.py                         # MLP and CNN, about 5 min on 2 cores
    python benchmarks/step_time.py --models mlp --guides delta normal --rounds 3 --threads 1
    python benchmarks/step_time.py --models mlp --prior both --threads 1   # old prior vs new
    python benchmarks/step_time.py --engine each --threads 1   # what each engine saving buys
    python benchmarks/step_time.py --cnn-size 32 --cnn-channels 3 --device cuda
    python benchmarks/step_time.py --models resnet18 --guides delta --device cuda  # CIFAR-shaped
    python benchmarks/step_time.py --data-robust at,trades,wdat,armor   # + data-robust rows
    python benchmarks/step_time.py --jit --threads 1   # compiled passes next to eager ones
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_otmdr import (
    ARMOR,
    OTMDR,
    SAM,
    TRADES,
    WDAT,
    AdversarialTraining,
    AutoDeltaEnsemble,
    EnsembleELBO,
)
from pyro_otmdr.bayes import bayesian
from pyro_otmdr.model_space import StepSavings
from pyro_otmdr.model_space.batching import split_in_halves
from pyro_otmdr.workflow.models import build_model

NUM_DATA = 4096
DATA_ROBUST = ("at", "trades", "wdat", "armor")


ENGINE_CHANGES = {
    "logq": (
        "a normal guide site's log-density at its own sample in closed form",
        "closed_form_logq",
    ),
    "frozen": (
        "fixed parameters (scales) are constants in the passes that drop their gradient",
        "frozen_constants",
    ),
    "served": (
        "those constants' constrained values served from the step's first pass",
        "served_constants",
    ),
    "device": ("a Trace_ELBO pass's loss kept on the device (no float per site)", "loss_on_device"),
}
"""The per-pass savings of the step engine, each with its field of :class:`StepSavings`."""


JIT_WARM_UP = 6
"""Warm-up steps of a compiled loss: its first steps trace its graphs, then TorchScript's
profiling executor optimises each graph after its first runs."""


class Variant(NamedTuple):
    """One way of running every method: a prior, the engine savings switched off, and whether
    the losses are compiled (``JitTrace_ELBO``)."""

    label: str
    prior: str
    disabled: tuple[str, ...] = ()
    jit: bool = False

    @contextmanager
    def engine(self, losses: Iterable[pyro.infer.ELBO]) -> Iterator[None]:
        """Run the OT-MDR and SAM losses among ``losses`` without the savings in ``disabled``
        (through their public ``engine.savings``); the losses are as they were after."""
        savings = StepSavings(**{ENGINE_CHANGES[name][1]: False for name in self.disabled})
        engines = [loss.engine for loss in losses if hasattr(loss, "engine")]
        before = [engine.savings for engine in engines]
        for engine in engines:
            engine.savings = savings
        try:
            yield
        finally:
            for engine, kept in zip(engines, before, strict=True):
                engine.savings = kept


def variants(args: argparse.Namespace) -> list[Variant]:
    """The variants to interleave: ``--prior``, ``--engine`` or ``--jit`` (one varied at once)."""
    if args.jit:
        return [Variant("eager", args.prior), Variant("jit", args.prior, jit=True)]
    if args.prior == "both":
        return [Variant("old", "old"), Variant("new", "new")]
    if args.engine == "new":
        return [Variant(args.prior, args.prior)]
    before = Variant("before", args.prior, tuple(ENGINE_CHANGES))
    each = [Variant(f"-{name}", args.prior, (name,)) for name in ENGINE_CHANGES]
    if args.engine == "old":
        return [before]
    return [before, *(each if args.engine == "each" else []), Variant("new", args.prior)]


class OldPrior:
    """The prior ``bayesian()`` built before ``IsotropicNormal``: ``Normal(0, s)`` expanded."""

    def __init__(self, new: Callable) -> None:
        self.new = new

    def __call__(self, module: torch.nn.Module) -> dist.Distribution:
        scale = self.new.root.prior_scale
        loc = torch.zeros((), dtype=scale.dtype, device=scale.device)
        shape = self.new.shape
        return dist.Normal(loc, scale).expand(shape).to_event(len(shape))


def use_prior(model: torch.nn.Module, kind: str) -> None:
    """Switch every ``PyroSample`` site of a ``bayesian()`` model to the old or the new prior."""
    for module in model.modules():
        samples = getattr(module, "_pyro_samples", {})
        for name, prior in samples.items():
            new = prior.new if isinstance(prior, OldPrior) else prior
            samples[name] = OldPrior(new) if kind == "old" else new


def network(name: str, args: argparse.Namespace) -> tuple[Callable, tuple[int, ...], int]:
    """The model, the shape of one input and the batch size."""
    if name == "mlp":
        net = build_model("mlp", 10, in_features=64, hidden=(args.hidden,) * args.layers)
        return bayesian(net, num_data=NUM_DATA), (64,), args.batch
    if name == "resnet18":
        net = build_model("resnet18", 10, in_channels=3, width=args.resnet_width)
        return bayesian(net, num_data=NUM_DATA), (3, 32, 32), args.resnet_batch
    channels = args.cnn_channels
    net = build_model("cnn", num_classes=10, in_channels=channels)
    return (
        bayesian(net, num_data=NUM_DATA),
        (channels, args.cnn_size, args.cnn_size),
        args.cnn_batch,
    )


def whole_batch_split(args: tuple, kwargs: dict, generator: torch.Generator):
    """The default random halves, but not *the* default: the scales take a whole-batch pass."""
    return split_in_halves(args, kwargs, generator)


def data_robust(name: str, args: argparse.Namespace) -> pyro.infer.ELBO:
    """The data-robust loss ``name`` (one of ``DATA_ROBUST``) around a fresh ``Trace_ELBO``."""
    attack = {"steps": args.attack_steps}
    if name == "at":
        return AdversarialTraining(Trace_ELBO(), eps=args.eps, **attack)
    if name == "trades":
        return TRADES(Trace_ELBO(), eps=args.eps, beta=6.0, **attack)
    if name == "wdat":
        return WDAT(Trace_ELBO(), delta=args.eps, beta=6.0, **attack)
    return ARMOR(Trace_ELBO(), eps=args.eps, budget=0.02, **attack)


def robust_methods(args: argparse.Namespace) -> dict[str, Callable[[], pyro.infer.ELBO]]:
    """Each chosen data-robust loss X, alone and under OT-MDR(K=1) (``k1+X``).

    X sums over an ensemble's members itself (one attack and pass per member), as ``k1`` does.
    """
    found = {}
    for name in args.data_robust:
        found[name] = lambda name=name: data_robust(name, args)
        found[f"k1+{name}"] = lambda name=name: OTMDR(
            data_robust(name, args), rho=args.rho, n_particles=1
        )
    return found


def attacks(loss: pyro.infer.ELBO) -> int | None:
    """The ``.attacks`` counter of the data-robust loss inside ``loss`` (None: there is none)."""
    while not hasattr(loss, "attacks") and hasattr(loss, "elbo"):
        loss = loss.elbo
    return getattr(loss, "attacks", None)


def methods(rho: float, guide: str, jit: bool = False) -> dict[str, Callable[[], pyro.infer.ELBO]]:
    """Plain SVI, SAM and OT-MDR (K=1, K=2; a whole-batch pass for AutoNormal's scales), over
    ``Trace_ELBO`` or (``jit``) ``JitTrace_ELBO`` (the project's models check only shapes: its
    tracer's warnings off)."""

    def elbo() -> pyro.infer.ELBO:
        return JitTrace_ELBO(ignore_jit_warnings=True) if jit else Trace_ELBO()

    found = {
        "svi": (lambda: EnsembleELBO(elbo())) if guide == "ensemble" else elbo,
        "sam": lambda: SAM(elbo(), rho=rho),
        "k1": lambda: OTMDR(elbo(), rho=rho, n_particles=1),
        "k2": lambda: OTMDR(elbo(), rho=rho, n_particles=2),
    }
    if guide == "normal":
        found["k1 whole"] = lambda: OTMDR(elbo(), rho=rho, split_batch=whole_batch_split)
    return found


def time_steps(svi: SVI, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> float:
    """Milliseconds per step over ``steps`` steps on random minibatches."""
    idx = [torch.randint(0, len(x), (batch,), device=x.device) for _ in range(steps)]
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in idx:
        svi.step(x[i], y[i])
    if x.is_cuda:
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / steps


def bench(
    model_name: str, guide_name: str, args: argparse.Namespace
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Median ms/step of every method per variant for one network and guide, all interleaved, and
    the attacks per step of the data-robust methods (over every step, warm-up included)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    device = torch.device(args.device)
    model, shape, batch = network(model_name, args)
    model = model.to(device)
    x = torch.rand(NUM_DATA, *shape, device=device)
    y = torch.randint(0, 10, (NUM_DATA,), device=device)
    guides = {
        "delta": AutoDelta,
        "normal": AutoNormal,
        "ensemble": lambda m: AutoDeltaEnsemble(m, num_members=args.members),
    }
    guide = guides[guide_name](model)
    runs = variants(args)
    losses, runners = {}, {}  # per compiled or not: each method's loss and its SVI
    for jit in sorted({variant.jit for variant in runs}):
        makers = methods(args.rho, guide_name, jit) | ({} if jit else robust_methods(args))
        losses[jit] = {name: make() for name, make in makers.items()}
        runners[jit] = {
            name: SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=loss)
            for name, loss in losses[jit].items()
        }
    for variant in runs:  # warm-up: set-up, caches, the compiled graphs
        use_prior(model, variant.prior)
        with variant.engine(losses[variant.jit].values()):
            for svi in runners[variant.jit].values():
                time_steps(svi, x, y, JIT_WARM_UP if variant.jit else 2, batch)
    samples = {variant.label: {name: [] for name in runners[variant.jit]} for variant in runs}
    for _ in range(args.rounds):
        for variant in runs:
            use_prior(model, variant.prior)
            with variant.engine(losses[variant.jit].values()):
                for name, svi in runners[variant.jit].items():
                    samples[variant.label][name].append(time_steps(svi, x, y, args.steps, batch))
    use_prior(model, "new")
    medians = {
        label: {name: statistics.median(values) for name, values in found.items()}
        for label, found in samples.items()
    }
    eager = [variant for variant in runs if not variant.jit]
    steps = len(eager) * (2 + args.rounds * args.steps)
    counts = {name: attacks(loss) for name, loss in losses[False].items()} if eager else {}
    return medians, {name: n / steps for name, n in counts.items() if n is not None}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn", "resnet18"]
    )
    parser.add_argument(
        "--guides", nargs="+", default=["delta", "normal", "ensemble"],
        choices=["delta", "normal", "ensemble"],
    )  # fmt: skip
    parser.add_argument("--hidden", type=int, default=512, help="MLP width")
    parser.add_argument("--layers", type=int, default=2, help="MLP hidden layers")
    parser.add_argument("--batch", type=int, default=128, help="MLP batch size")
    parser.add_argument("--cnn-batch", type=int, default=256)
    parser.add_argument("--cnn-size", type=int, default=8, help="image side (8: digits)")
    parser.add_argument("--cnn-channels", type=int, default=1, help="image channels")
    parser.add_argument("--resnet-batch", type=int, default=128, help="ResNet-18 batch size")
    parser.add_argument(
        "--resnet-width", type=int, default=64, help="ResNet-18 base width (64: the standard net)"
    )
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved blocks per method")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--members", type=int, default=3, help="AutoDeltaEnsemble size")
    parser.add_argument("--threads", type=int, help="torch threads (1 is steadier on a busy CPU)")
    parser.add_argument(
        "--prior", default="new", choices=["new", "old", "both"],
        help="bayesian()'s fused prior, the expanded Normal before it, or both interleaved",
    )  # fmt: skip
    parser.add_argument(
        "--engine", default="new", choices=["new", "old", "both", "each"],
        help="the step engine with its per-pass savings (new), without them (old, shown as "
        "'before'), both interleaved, or each: also new without each one in turn",
    )  # fmt: skip
    parser.add_argument(
        "--jit", action="store_true",
        help="also run every method over JitTrace_ELBO (compiled passes), interleaved with the "
        "eager ones; a j/e line gives compiled/eager",
    )  # fmt: skip
    parser.add_argument(
        "--data-robust", type=robust_names, default=[], metavar="X[,X...]",
        help=f"also time these data-robust losses alone and under OT-MDR(K=1), comma-separated "
        f"from {','.join(DATA_ROBUST)} (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--eps", type=float, default=0.1,
        help="the data-robust losses' radius (WDAT's delta) on inputs in [0, 1]",
    )  # fmt: skip
    parser.add_argument(
        "--attack-steps", type=int, default=10, help="PGD steps of the data-robust losses"
    )
    return parser.parse_args()


def robust_names(text: str) -> list[str]:
    """``--data-robust``'s comma-separated names, checked against ``DATA_ROBUST``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATA_ROBUST]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown data-robust loss(es) {unknown}; choose from {','.join(DATA_ROBUST)}"
        )
    return list(dict.fromkeys(names))


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    mlp = f"MLP 64-{'-'.join([str(args.hidden)] * args.layers)}-10 at batch {args.batch}"
    image = f"{args.cnn_channels}x{args.cnn_size}x{args.cnn_size}"
    print(
        f"{mlp}; cnn on {image} at batch {args.cnn_batch}; resnet18 (width {args.resnet_width}) "
        f"on 3x32x32 at batch {args.resnet_batch}; device {args.device}, "
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}; "
        f"median of {args.rounds} blocks of {args.steps} steps"
    )
    if sum([args.prior == "both", args.engine != "new", args.jit]) > 1:
        raise SystemExit("vary one of --prior, --engine and --jit at once")
    if args.jit and args.data_robust:
        raise SystemExit("--jit times the methods over the ELBO; drop --data-robust")
    names = ["svi", "sam", "k1", "k2", "k1 whole"]
    header = "".join(f"{n:>9}" for n in names)
    w = model_width(args)
    print(
        f"{'model':<{w}} {'guide':<9}{'variant':<9}{header}   k1/SAM  SAM/SVI    k2/k1  whole/SAM"
    )
    robust = []
    for model_name, guide_name in itertools.product(args.models, args.guides):
        found, per_step = bench(model_name, guide_name, args)
        robust.append((model_name, guide_name, found, per_step))
        for label, ms in found.items():
            print(f"{model_name:<{w}} {guide_name:<9}{label:<9}{row(ms, names)}", flush=True)
        for top, label, ratio_label in ratio_lines(found):
            ratios = "".join(
                f"{found[top][n] / found[label][n]:>9.2f}" if n in found[top] else f"{'':>9}"
                for n in names
            )
            print(f"{model_name:<{w}} {guide_name:<9}{ratio_label:<9}{ratios}", flush=True)
    if args.engine == "each":
        print("\nn/-X: new / new without change X, per method (below 1: X bought that much)")
        for name, (what, _) in ENGINE_CHANGES.items():
            print(f"  {name:<7} {what}")
    if args.data_robust:
        print_robust(robust, args)


def model_width(args: argparse.Namespace) -> int:
    """The width of the model column: 5, or the longest model name asked for."""
    return max(5, *(len(name) for name in args.models))


def ratio_lines(found: dict[str, dict[str, float]]) -> list[tuple[str, str, str]]:
    """The variants to divide and the label of their ratio line: ``new`` by ``n/o`` (the old
    prior), ``n/b`` (the engine before its savings), ``n/-X`` (without change X); ``jit`` by
    ``eager`` (``j/e``: compiled / eager)."""
    if "jit" in found and "eager" in found:
        return [("jit", "eager", "j/e")]
    if "new" not in found:
        return []
    short = {"old": "n/o", "before": "n/b"}
    return [("new", label, short.get(label, f"n/{label}")) for label in found if label != "new"]


def print_robust(
    results: list[tuple[str, str, dict[str, dict[str, float]], dict[str, float]]],
    args: argparse.Namespace,
) -> None:
    """The data-robust table: ms/step of X and k1+X, X/SVI, (k1+X)/X next to k1/SVI, and the
    attacks per step of X and k1+X."""
    print(
        f"\ndata-robust losses X (eps {args.eps}, {args.attack_steps} attack steps, inputs "
        f"uniform in [0, 1]); same runs as above, interleaved with them"
    )
    cells = "".join(f"{n:>9}" for n in ["svi", "k1", "X", "k1+X", "X/SVI", "k1X/X", "k1/SVI"])
    w = model_width(args)
    print(f"{'model':<{w}} {'guide':<9}{'variant':<9}{'X':<7}{cells}  attacks/step X, k1+X")
    for model_name, guide_name, found, per_step in results:
        for label, ms in found.items():
            for name in args.data_robust:
                head = f"{model_name:<{w}} {guide_name:<9}{label:<9}{name:<7}"
                print(f"{head}{robust_row(ms, name)}{attack_cells(per_step, name)}", flush=True)


def robust_row(ms: dict[str, float], name: str) -> str:
    """The ms/step cells and the ratios of one data-robust line."""
    times = [ms["svi"], ms["k1"], ms[name], ms[f"k1+{name}"]]
    ratios = [ms[name] / ms["svi"], ms[f"k1+{name}"] / ms[name], ms["k1"] / ms["svi"]]
    return "".join(f"{t:>9.1f}" for t in times) + "".join(f"{r:>9.2f}" for r in ratios)


def attack_cells(per_step: dict[str, float], name: str) -> str:
    """The attacks per step of X and of k1+X."""
    return f"{per_step[name]:>11.2f}{per_step[f'k1+{name}']:>7.2f}"


def row(ms: dict[str, float], names: list[str]) -> str:
    """The ms/step cells and the ratios of one line."""
    cells = "".join(f"{ms[n]:>9.1f}" if n in ms else f"{'':>9}" for n in names)
    whole = f"{ms['k1 whole'] / ms['sam']:>11.2f}" if "k1 whole" in ms else ""
    return (
        f"{cells}{ms['k1'] / ms['sam']:>9.2f}{ms['sam'] / ms['svi']:>9.2f}"
        f"{ms['k2'] / ms['k1']:>9.2f}{whole}"
    )


if __name__ == "__main__":
    main()
