"""Posterior-predictive evaluation of Pyro classifiers: metrics, ArviZ export, calibration plots.

:func:`evaluate` runs the model once per posterior draw over the test set, in chunks, on the
model's device, and keeps only summaries: the mean predictive probabilities, the per-draw
log-likelihood of every test point and one label sampled from every draw's predictive. The draws are

* ``AutoDelta`` (and subclasses): one draw, the point estimate;
* an ensemble guide (an ``int`` attribute ``num_members`` and a method
  ``member_values(m, *args) -> dict``): every member once;
* any other guide (``AutoNormal``, ...): ``num_samples`` draws of its latent sites.

Usage::

    from pyro_otmdr.evaluation import evaluate

    result = evaluate(model, guide, x_test, y_test, num_samples=32, x_val=x_val, y_val=y_val)
    print(result.metrics)                      # accuracy, nll, brier, ece, auroc, *_ts
    tree = result.to_datatree()                # ArviZ: az.loo(tree), az.summary(tree)
    result.plot_calibration("calibration.png")  # + calibration_pava.png
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoDelta
from pyro.poutine.util import site_is_subsample

from pyro_otmdr import metrics

__all__ = ["EvaluationResult", "evaluate"]


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Summaries of a posterior-predictive evaluation (all tensors on the CPU).

    :ivar metrics: ``accuracy``, ``nll``, ``brier``, ``ece``, ``auroc``; ``auroc_ood`` when OOD
        inputs were given; ``temperature``, ``nll_ts``, ``brier_ts``, ``ece_ts`` when a validation
        split was given. Undefined values (e.g. AUROC with no error at all) are ``nan``.
    :ivar probs: mean predictive probabilities, ``(n_test, C)``, float64.
    :ivar log_likelihood: ``log p(y_i | x_i, theta_s)`` per draw and test point,
        ``(n_draws, n_test)``.
    :ivar labels: the test labels, ``(n_test,)``.
    :ivar predictive_samples: one label sampled from each draw's predictive,
        ``(n_draws, n_test)``.
    :ivar draw_accuracy: test accuracy of each draw on its own, ``(n_draws,)``.
    :ivar ood_probs: mean predictive probabilities of the OOD inputs, or ``None``.
    :ivar site: name of the observed sample site.
    :ivar num_bins: number of confidence bins of the ECE and the reliability diagram.

    Usage::

        result = evaluate(model, guide, x, y)
        result.metrics["ece"], result.probs.shape, result.num_draws
    """

    metrics: dict[str, float]
    probs: torch.Tensor
    log_likelihood: torch.Tensor
    labels: torch.Tensor
    predictive_samples: torch.Tensor
    draw_accuracy: torch.Tensor
    ood_probs: torch.Tensor | None = None
    site: str = "obs"
    num_bins: int = 15

    @property
    def num_draws(self) -> int:
        """Number of posterior draws (ensemble members, samples, or 1 for a point estimate)."""
        return int(self.log_likelihood.shape[0])

    def to_datatree(self, num_chains: int = 1):
        """The evaluation as an ArviZ ``xarray.DataTree``.

        Groups, with sample dims ``("chain", "draw")`` and the observation dim ``"obs_id"``:

        * ``posterior_predictive``: variable ``site``, a label sampled from each draw's predictive;
        * ``log_likelihood``: variable ``site``, the per-draw log-likelihood of each test point;
        * ``observed_data``: variable ``site``, the test labels;
        * ``posterior``: ``accuracy`` and ``nll`` of each draw on the test set. They are
          functions of the parameters (derived quantities); the latent weights themselves are not
          stored. ``az.loo`` needs this group to exist, ``ess``/``rhat``/``summary`` read it.

        Draws of a guide are independent, so the default is one chain (``az.loo`` then uses a
        relative efficiency of exactly 1). R-hat compares chains and is ``nan`` with one chain;
        ``num_chains=k`` splits the draws into ``k`` chains of equal length if you want it anyway.
        ``az.loo`` needs about 25 draws or more (its Pareto tail fit needs 5 tail draws).

        Usage::

            import arviz as az

            tree = result.to_datatree()
            az.loo(tree), az.summary(tree), az.ess(tree, group="posterior_predictive")
        """
        import arviz as az

        if not isinstance(num_chains, int) or num_chains < 1 or self.num_draws % num_chains:
            raise ValueError(
                f"num_chains must be a positive int dividing the {self.num_draws} draws, "
                f"got {num_chains!r}"
            )
        shape = (num_chains, self.num_draws // num_chains)
        n = self.labels.shape[0]
        draw_nll = -self.log_likelihood.mean(-1)
        data = {
            "posterior": {
                "accuracy": self.draw_accuracy.double().numpy().reshape(shape),
                "nll": draw_nll.double().numpy().reshape(shape),
            },
            "posterior_predictive": {self.site: self.predictive_samples.numpy().reshape(*shape, n)},
            "log_likelihood": {self.site: self.log_likelihood.double().numpy().reshape(*shape, n)},
            "observed_data": {self.site: self.labels.numpy()},
        }
        return az.from_dict(data, dims={self.site: ["obs_id"]}, coords={"obs_id": np.arange(n)})

    def plot_calibration(
        self, path: str | Path, *, pava_samples: int = 200, seed: int = 0, dpi: int = 80
    ) -> list[Path]:
        """Write a reliability diagram at ``path`` and ArviZ's PAV calibration plot beside it.

        The reliability diagram shows the accuracy in each of ``num_bins`` equal-width confidence
        bins against the diagonal, with the ECE in its title. The second PNG,
        ``<stem>_pava.png``, is ``arviz_plots.plot_ppc_pava(..., data_type="categorical")``:
        one one-vs-others PAV-adjusted calibration curve per class. ArviZ estimates the predicted
        probability of a class as the fraction of posterior-predictive samples equal to it, so
        for this plot ``pava_samples`` labels per test point are drawn from the mean predictive
        (the same distribution as ``to_datatree()``'s one label per draw, with a resolution of
        ``1/pava_samples`` instead of ``1/n_draws``; a point estimate works too).

        :returns: the two written paths.

        Usage::

            paths = result.plot_calibration("figures/calibration.png")
        """
        if not isinstance(pava_samples, int) or pava_samples < 2:
            raise ValueError(f"pava_samples must be an int >= 2, got {pava_samples!r}")
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"path must end in .png, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        pava_path = path.with_name(f"{path.stem}_pava.png")
        _plot_reliability(self.probs, self.labels, self.num_bins, path, dpi)
        _plot_pava(self, pava_path, pava_samples, seed, dpi)
        return [path, pava_path]


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def _plot_reliability(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int, path: Path, dpi: int
) -> None:
    """Bars of accuracy per confidence bin, the diagonal, and the ECE in the title (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs64 = probs.double()
    acc, conf, count = metrics.calibration_bins(probs64, labels, num_bins)
    ece = float(metrics.ece(probs64, labels, num_bins))
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    width = 1.0 / num_bins
    filled = count.numpy() > 0
    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    left = edges[:-1][filled]
    acc_np, conf_np = acc.numpy()[filled], conf.numpy()[filled]
    ax.bar(left, acc_np, width, align="edge", color="C0", edgecolor="black", label="accuracy")
    gap = np.abs(acc_np - conf_np)
    bottom = np.minimum(acc_np, conf_np)
    hatch = {"fill": False, "hatch": "//", "edgecolor": "C3", "label": "gap to confidence"}
    ax.bar(left, gap, width, bottom=bottom, align="edge", **hatch)
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy")
    ax.set_title(f"Reliability diagram, ECE = {ece:.4f} ({num_bins} bins)")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def _plot_pava(result: EvaluationResult, path: Path, samples: int, seed: int, dpi: int) -> None:
    """ArviZ's categorical PAV calibration plot of the mean predictive, saved as a PNG."""
    import arviz as az
    import matplotlib.pyplot as plt
    from arviz_plots import plot_ppc_pava

    generator = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(result.probs.double(), samples, replacement=True, generator=generator)
    n, num_classes = result.probs.shape
    tree = az.from_dict(
        {
            "posterior_predictive": {result.site: draws.T.numpy()[None]},
            "observed_data": {result.site: result.labels.numpy()},
        },
        dims={result.site: ["obs_id"]},
        coords={"obs_id": np.arange(n)},
    )
    cols = min(num_classes, 5)
    rows = math.ceil(num_classes / cols)
    figure_kwargs = {"figsize": (2.6 * cols, 2.3 * rows), "layout": "constrained"}
    collection = plot_ppc_pava(
        tree,
        data_type="categorical",
        backend="matplotlib",
        col_wrap=cols,
        figure_kwargs=figure_kwargs,
    )
    try:
        collection.savefig(path, dpi=dpi)
    finally:
        plt.close(collection.get_viz("figure"))


# --------------------------------------------------------------------------------------------
# validation and set-up
# --------------------------------------------------------------------------------------------


def _check_split(name: str, x: Any, y: Any | None) -> None:
    """Raise ``ValueError`` unless ``x`` (and ``y``) are tensors of one non-zero length."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty tensor with examples on dim 0")
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dim() != 1:
        raise ValueError(f"labels for {name} must be a 1-D tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels for {name} must be integers, got dtype {y.dtype}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} has {x.shape[0]} examples but its labels have {y.shape[0]}; pass one "
            "label per example"
        )
    if bool((y < 0).any()):
        raise ValueError(f"labels for {name} must be >= 0, got minimum {int(y.min())}")


def _check_args(x, y, x_val, y_val, x_ood, num_samples, batch_size, num_bins, site) -> None:
    _check_split("x", x, y)
    if (x_val is None) != (y_val is None):
        raise ValueError("pass x_val and y_val together (temperature scaling needs both)")
    if x_val is not None:
        _check_split("x_val", x_val, y_val)
    if x_ood is not None:
        _check_split("x_ood", x_ood, None)
    counts = {"num_samples": num_samples, "batch_size": batch_size, "num_bins": num_bins}
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(site, str) or not site:
        raise ValueError(f"site must be the name of the observed sample site, got {site!r}")


def _resolve_device(guide: Callable, device: str | torch.device | None) -> torch.device:
    """``device`` if given, else the device of the guide's parameters, else of the param store."""
    if device is not None:
        return torch.device(device)
    if isinstance(guide, torch.nn.Module):
        param = next(iter(guide.parameters()), None)
        if param is not None:
            return param.device
    for _, param in pyro.get_param_store().named_parameters():
        return param.device
    return torch.device("cpu")


def _draw_kind(guide: Callable, num_samples: int) -> tuple[str, int]:
    """``("delta", 1)``, ``("ensemble", num_members)`` or ``("sample", num_samples)``."""
    if isinstance(guide, AutoDelta):
        return "delta", 1
    members = getattr(guide, "num_members", None)
    if isinstance(members, int) and not isinstance(members, bool):
        if members < 1 or not callable(getattr(guide, "member_values", None)):
            raise ValueError(
                "an ensemble guide needs num_members >= 1 and a method member_values(m, *args); "
                f"got num_members={members}"
            )
        return "ensemble", members
    return "sample", num_samples


# --------------------------------------------------------------------------------------------
# one draw
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the torch RNG seeded to ``seed``; restore the global state after it."""
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def _latents(guide: Callable, kind: str, index: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Latent values of draw ``index``, to condition the model on for every test chunk."""
    if kind == "delta":
        values = guide(x)
    elif kind == "ensemble":
        values = guide.member_values(index, x)
    else:
        trace = poutine.trace(guide).get_trace(x)
        values = {
            name: node["value"]
            for name, node in trace.nodes.items()
            if node["type"] == "sample"
            and not node["is_observed"]
            and not site_is_subsample(node)
            and not node["infer"].get("is_auxiliary", False)
        }
    if not isinstance(values, dict):
        raise ValueError(
            f"the guide must give a dict of latent values, got {type(values).__name__}"
        )
    return values


def _categorical(fn: Any, site: str) -> torch.distributions.Categorical:
    """Unwrap masks, ``Independent`` and other wrappers down to a ``Categorical``."""
    while not isinstance(fn, torch.distributions.Categorical) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if not isinstance(fn, torch.distributions.Categorical):
        raise ValueError(
            f"site {site!r} must hold a Categorical distribution (possibly masked or wrapped in "
            f"Independent), got {type(fn).__name__}"
        )
    return fn


def _chunk_log_probs(model: Callable, latents: dict, x: torch.Tensor, site: str) -> torch.Tensor:
    """Normalised log-probabilities ``(len(x), C)`` of the model's site under fixed latents."""
    trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(x)
    node = trace.nodes.get(site)
    if node is None or node["type"] != "sample":
        sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
        raise ValueError(f"the model trace has no sample site {site!r}; pass site= one of {sites}")
    logits = _categorical(node["fn"], site).logits
    if logits.shape[:-1].numel() != x.shape[0]:
        raise ValueError(
            f"site {site!r} has batch shape {tuple(logits.shape[:-1])}, expected one "
            f"distribution per example ({x.shape[0]})"
        )
    return torch.log_softmax(logits.reshape(x.shape[0], logits.shape[-1]), dim=-1)


def _sample_labels(log_probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample of one label per row, given one uniform number per row."""
    cdf = log_probs.exp().cumsum(-1)
    return (cdf < uniform.unsqueeze(-1)).sum(-1).clamp_max(log_probs.shape[-1] - 1)


class _Accumulator:
    """Running sums for one split: the probabilities, and with ``num_draws`` per-draw summaries.

    The per-draw summaries (log-likelihood as float32, sampled label, accuracy) go straight into
    preallocated CPU tensors, one row per draw. Labels, when given, are checked against the
    number of classes of the model.
    """

    def __init__(self, x, y, device: torch.device, num_draws: int | None = None) -> None:
        self.x, self.y, self.device = x, y, device
        self.prob_sum: torch.Tensor | None = None
        self.per_draw = num_draws is not None
        if self.per_draw:
            n = x.shape[0]
            self.log_lik = torch.empty(num_draws, n)
            self.samples = torch.empty(num_draws, n, dtype=torch.long)
            self.draw_accuracy = torch.empty(num_draws, dtype=torch.float64)

    def add_draw(self, index, model, latents, site, batch_size, uniform) -> None:
        """Run draw ``index`` over every chunk of this split and fold it into the sums."""
        n = self.x.shape[0]
        if self.per_draw:
            log_lik = torch.empty(n, device=self.device)
            samples = torch.empty(n, dtype=torch.long, device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = self.x[start:stop].to(self.device, non_blocking=True)
            log_probs = _chunk_log_probs(model, latents, x, site)
            self._add_probs(start, stop, log_probs)
            if self.y is not None:
                y = self._labels(start, stop, log_probs.shape[-1])
            if self.per_draw:
                log_lik[start:stop] = log_probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
                samples[start:stop] = _sample_labels(log_probs, uniform[start:stop])
                correct += (log_probs.argmax(-1) == y).sum()
        if self.per_draw:
            self.log_lik[index] = log_lik.cpu()
            self.samples[index] = samples.cpu()
            self.draw_accuracy[index] = correct.item() / n

    def _add_probs(self, start: int, stop: int, log_probs: torch.Tensor) -> None:
        if self.prob_sum is None:
            shape = (self.x.shape[0], log_probs.shape[-1])
            self.prob_sum = torch.zeros(shape, dtype=torch.float64, device=self.device)
        elif self.prob_sum.shape[-1] != log_probs.shape[-1]:
            raise ValueError("the number of classes changed between chunks or draws")
        self.prob_sum[start:stop] += log_probs.exp()

    def _labels(self, start: int, stop: int, num_classes: int) -> torch.Tensor:
        y = self.y[start:stop].to(self.device, non_blocking=True).long()
        if bool((y >= num_classes).any()):
            raise ValueError(
                f"labels must be < the number of classes ({num_classes}); got {int(y.max())}"
            )
        return y

    def mean_probs(self) -> torch.Tensor:
        """Mean predictive probabilities on the CPU, renormalised against rounding."""
        return (self.prob_sum / self.prob_sum.sum(-1, keepdim=True)).cpu()


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _run_draws(model, guide, splits, kind, num_draws, site, batch_size, device) -> None:
    """Fold every posterior draw into the split accumulators, one draw at a time."""
    base_seed = int(torch.randint(0, 2**62, ()).item())
    test = splits["test"]
    first = test.x[:batch_size].to(device, non_blocking=True)
    for index in range(num_draws):
        with _seeded_rng(base_seed + index, device):
            latents = _latents(guide, kind, index, first)
            uniform = torch.rand(test.x.shape[0], device=device)
            for split in splits.values():
                split.add_draw(index, model, latents, site, batch_size, uniform)


def _safe_auroc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AUROC, or ``nan`` when only one class is present."""
    if targets.all() or not targets.any():
        return math.nan
    return float(metrics.auroc(scores, targets))


def _all_metrics(probs, labels, num_bins, *, val=None, ood_probs=None) -> dict[str, float]:
    """All scalar metrics of the mean predictive (float64 on the CPU)."""
    p = probs.double()
    confidence, predicted = p.max(-1)
    out = {
        "accuracy": float(metrics.accuracy(p, labels)),
        "nll": float(metrics.nll(p, labels)),
        "brier": float(metrics.brier(p, labels)),
        "ece": float(metrics.ece(p, labels, num_bins)),
        "auroc": _safe_auroc(confidence, predicted == labels),
    }
    if ood_probs is not None:
        ood_confidence = ood_probs.double().max(-1).values
        scores = torch.cat([confidence, ood_confidence])
        targets = torch.cat([torch.ones_like(confidence), torch.zeros_like(ood_confidence)])
        out["auroc_ood"] = _safe_auroc(scores, targets.bool())
    if val is not None:
        val_probs, val_labels = val
        tiny = torch.finfo(torch.float64).tiny
        temperature = metrics.fit_temperature(val_probs.double().clamp_min(tiny).log(), val_labels)
        scaled = metrics.apply_temperature(p.clamp_min(tiny).log(), temperature)
        out["temperature"] = temperature
        out["nll_ts"] = float(metrics.nll(scaled, labels))
        out["brier_ts"] = float(metrics.brier(scaled, labels))
        out["ece_ts"] = float(metrics.ece(scaled, labels, num_bins))
    return out


def evaluate(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_samples: int = 32,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    x_ood: torch.Tensor | None = None,
    site: str = "obs",
    num_bins: int = 15,
) -> EvaluationResult:
    """Evaluate a Pyro classifier's posterior predictive on a test set.

    ``model(x, y=None)`` must sample the site ``site`` from a ``Categorical`` (masks, plates and
    ``Independent`` are unwrapped). For each draw the latents come from the guide (see the module
    docstring); the model is then run as
    ``poutine.trace(poutine.condition(model, data=latents)).get_trace(x_chunk)`` for every chunk
    of ``batch_size`` test points, so all chunks of one draw share the same latents. Latent sites
    must be global (not per example). Everything runs under ``torch.no_grad()`` on ``device``
    (default: the device of the guide's parameters) and no parameter is changed; only the
    summaries move to the CPU, so memory does not grow with ``num_samples``.

    Each draw uses its own seeded RNG stream derived from the global torch RNG, so results depend
    on ``pyro.set_rng_seed`` but not on ``batch_size``; the global RNG advances by one draw only.

    :param model: the model, called as ``model(x_chunk)``.
    :param guide: ``AutoDelta``, an ensemble guide, or any guide whose trace holds the latents.
    :param x: test inputs, examples on dim 0.
    :param y: integer test labels in ``[0, C)``.
    :param num_samples: draws for guides that are neither ``AutoDelta`` nor an ensemble.
    :param batch_size: test points per forward pass.
    :param device: where to run; default the guide's device.
    :param x_val: validation inputs for temperature scaling (with ``y_val``).
    :param y_val: validation labels.
    :param x_ood: out-of-distribution inputs; adds ``auroc_ood`` (max-probability score).
    :param site: name of the observed categorical site.
    :param num_bins: equal-width confidence bins of the ECE.
    :raises ValueError: for mismatched lengths, labels out of range, a missing or non-categorical
        site, ``num_samples < 1``, or ``x_val`` without ``y_val``.

    Usage::

        guide = AutoNormal(model)
        ...  # train with SVI
        result = evaluate(model, guide, x_test, y_test, num_samples=64, x_val=x_val, y_val=y_val)
        result.metrics["nll_ts"]
    """
    _check_args(x, y, x_val, y_val, x_ood, num_samples, batch_size, num_bins, site)
    device = _resolve_device(guide, device)
    kind, num_draws = _draw_kind(guide, num_samples)
    splits = {"test": _Accumulator(x, y, device, num_draws)}
    if x_val is not None:
        splits["val"] = _Accumulator(x_val, y_val, device)
    if x_ood is not None:
        splits["ood"] = _Accumulator(x_ood, None, device)
    with torch.no_grad():
        _run_draws(model, guide, splits, kind, num_draws, site, batch_size, device)
    probs = splits["test"].mean_probs()
    labels = y.detach().cpu().long()
    val = None
    if x_val is not None:
        val = (splits["val"].mean_probs(), y_val.detach().cpu().long())
    ood_probs = splits["ood"].mean_probs() if x_ood is not None else None
    test = splits["test"]
    return EvaluationResult(
        metrics=_all_metrics(probs, labels, num_bins, val=val, ood_probs=ood_probs),
        probs=probs,
        log_likelihood=test.log_lik,
        labels=labels,
        predictive_samples=test.samples,
        draw_accuracy=test.draw_accuracy,
        ood_probs=ood_probs,
        site=site,
        num_bins=num_bins,
    )
