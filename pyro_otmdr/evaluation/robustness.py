"""The robustness report: clean and robust accuracy of a classifier per threat and budget.

It composes the attacks of :mod:`pyro_otmdr.data_space` the way :func:`evaluate` composes
metrics. Threats:

======================  =========================================================  ==========
threat                  attack                                                     budget
======================  =========================================================  ==========
``"w2-linf"``           W-PGD, ``W_2`` ball, linf cost, ReDLR (Bai et al. 2023)    ``delta``
``"w2-l2"``             W-PGD, ``W_2`` ball, l2 cost, ReDLR                        ``delta``
``"linf"``              pointwise PGD (Madry), linf ball, CE, random start         ``eps``
``"l2"``                pointwise PGD, l2 ball, CE, random start                   ``eps``
``"autoattack-linf"``   AutoAttack (Croce and Hein 2020), standard, linf ball      ``eps``
``"autoattack-l2"``     AutoAttack, standard, l2 ball                              ``eps``
======================  =========================================================  ==========

Every budget is in the units of the inputs' box (``[0, 1]`` pixels), the same for every threat.
The AutoAttack threats need the optional extra (``pip install "pyro-otmdr[autoattack]"``; asking
for them without it raises an ``ImportError`` saying so before any attack runs); they run the
fixed standard ensemble, so ``steps``, ``restarts`` and the losses do not apply to them, and
their seed is drawn from the torch RNG.
A Bayesian model is attacked through its posterior predictive with FROZEN draws (a
deterministic function of the input); choosing the worst iterate on those draws favours the
attacker, so the chosen inputs are re-evaluated with FRESH draws and both are reported.

Usage::

    import torch
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr import evaluate, robustness
    from pyro_otmdr.bayes import bayesian

    model = bayesian(torch.nn.Linear(4, 3), num_data=32)
    guide = AutoNormal(model)
    x_test, y_test = torch.rand(32, 4), torch.randint(3, (32,))
    guide(x_test, y_test)                # set the autoguide up (train it with SVI first)
    report = robustness(model, guide, x_test, y_test, budgets=(0.05, 0.1), num_samples=4,
                        steps=3)
    print(report.table())                # | threat | Upsilon | 0.05 | 0.1 |, one row per threat
    report.plot("robustness.png"); report.to_json("robustness.json")
    result = evaluate(model, guide, x_test, y_test, num_samples=4)
    tree = report.to_datatree(result.to_datatree())
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data_space import autoattack, pgd, posterior_predictive, w_pgd, w_sensitivity
from ..data_space.autoattack import VERSIONS
from ..data_space.common import attack_mode, check_choice, check_positive
from .threats import THREATS

__all__ = ["THREATS", "RobustnessReport", "robustness", "run_autoattack", "run_pgd", "run_w_pgd"]


@dataclass
class RobustnessReport:
    """Clean and robust accuracy per threat and budget (lists follow ``budgets``).

    :ivar threats: the threats, in order.
    :ivar budgets: the budgets, in the units of the input box.
    :ivar clean_accuracy: accuracy on the clean inputs (frozen draws).
    :ivar robust_accuracy: ``{threat: [accuracy per budget]}`` (frozen draws).
    :ivar robust_accuracy_fresh: the same inputs re-evaluated with fresh draws; ``None`` for a
        deterministic predictor (a plain network, a point estimate, an ensemble).
    :ivar clean_accuracy_fresh: the clean accuracy with those fresh draws, or ``None``.
    :ivar distance: ``{threat: [W_p cost of the chosen inputs per budget]}``.
    :ivar max_loss: ``{threat: [the attack's max_loss per budget]}``.
    :ivar upsilon: ``{threat: first-order sensitivity Upsilon of the CE loss}``.
    :ivar settings: the attack settings and the protocol.
    """

    threats: list[str]
    budgets: list[float]
    clean_accuracy: float
    robust_accuracy: dict[str, list[float]]
    distance: dict[str, list[float]]
    max_loss: dict[str, list[float]]
    upsilon: dict[str, float]
    robust_accuracy_fresh: dict[str, list[float]] | None = None
    clean_accuracy_fresh: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return dict(vars(self))

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON at ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")
        return path

    def to_dataset(self):
        """An ``xarray.Dataset`` with dims ``threat`` and ``budget``; scalars as attributes."""
        import xarray as xr

        def grid(values: dict[str, list[float]]) -> tuple:
            return ("threat", "budget"), [values[t] for t in self.threats]

        data = {
            "robust_accuracy": grid(self.robust_accuracy),
            "distance": grid(self.distance),
            "max_loss": grid(self.max_loss),
            "upsilon": ("threat", [self.upsilon[t] for t in self.threats]),
        }
        if self.robust_accuracy_fresh is not None:
            data["robust_accuracy_fresh"] = grid(self.robust_accuracy_fresh)
        attrs = {"clean_accuracy": self.clean_accuracy}
        if self.clean_accuracy_fresh is not None:
            attrs["clean_accuracy_fresh"] = self.clean_accuracy_fresh
        attrs.update({k: str(v) for k, v in self.settings.items()})
        coords = {"threat": self.threats, "budget": self.budgets}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def to_datatree(self, tree=None, group: str = "robustness"):
        """``tree`` (an ArviZ ``xarray.DataTree``, e.g. ``EvaluationResult.to_datatree()``) with
        the report as its own group ``group``; a new tree with only that group if ``tree`` is
        ``None``. The given tree is not modified.

        Usage::

            import torch
            from pyro.infer.autoguide import AutoDelta
            from pyro_otmdr import evaluate, robustness
            from pyro_otmdr.bayes import bayesian

            model = bayesian(torch.nn.Linear(4, 3), num_data=32)
            guide = AutoDelta(model)
            x, y = torch.rand(32, 4), torch.randint(3, (32,))
            guide(x, y)                                  # set the autoguide up
            result = evaluate(model, guide, x, y)
            report = robustness(model, guide, x, y, budgets=(0.05, 0.1), steps=5)
            tree = report.to_datatree(result.to_datatree())
            curve = tree["robustness"].dataset.robust_accuracy.sel(threat="w2-linf")
            assert curve.values.tolist() == report.robust_accuracy["w2-linf"]
        """
        import xarray as xr

        tree = xr.DataTree() if tree is None else tree.copy()
        tree[group] = xr.DataTree(self.to_dataset())
        return tree

    def table(self) -> str:
        """A markdown table: one row per threat, one column per budget (fresh in brackets)."""
        fresh = self.robust_accuracy_fresh
        head = "| threat | Upsilon | " + " | ".join(f"{b:g}" for b in self.budgets) + " |"
        lines = [head, "|---" * (len(self.budgets) + 2) + "|"]
        for t in self.threats:
            cells = [
                f"{a:.4f}" + (f" ({fresh[t][i]:.4f})" if fresh is not None else "")
                for i, a in enumerate(self.robust_accuracy[t])
            ]
            lines.append(f"| {t} | {self.upsilon[t]:.3g} | " + " | ".join(cells) + " |")
        clean = f"clean accuracy {self.clean_accuracy:.4f}"
        if self.clean_accuracy_fresh is not None:
            clean += f" ({self.clean_accuracy_fresh:.4f} with fresh draws, in brackets below)"
        return clean + "\n" + "\n".join(lines)

    def plot(self, path: str | Path, *, dpi: int = 80) -> Path:
        """Robust accuracy against the budget, one curve per threat (PNG, Agg canvas).

        Fresh-draw re-evaluations are dashed; the clean accuracy is the dotted line.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"path must end in .png, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(5.0, 4.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        budgets = [0.0, *self.budgets]
        for t in self.threats:
            (line,) = ax.plot(budgets, [self.clean_accuracy, *self.robust_accuracy[t]], "o-")
            line.set_label(t)
            if self.robust_accuracy_fresh is not None:
                values = [self.clean_accuracy_fresh, *self.robust_accuracy_fresh[t]]
                ax.plot(budgets, values, "--", color=line.get_color(), label=f"{t} (fresh)")
        ax.axhline(self.clean_accuracy, color="grey", linestyle=":", label="clean")
        ax.set(xlabel="budget (input box units)", ylabel="robust accuracy", ylim=(0.0, 1.02))
        ax.legend(loc="lower left", fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        return path


def _accuracy(predict: Callable, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    correct = 0
    with attack_mode(predict), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = predict(x[start : start + batch_size])
            labels = y[start : start + batch_size].to(logits.device)
            correct += int((logits.argmax(-1) == labels).sum())
    return correct / x.shape[0]


def _check(threats: Sequence[str], budgets: Sequence[float], steps: int) -> None:
    if isinstance(threats, str) or not threats:
        raise ValueError(f"threats must be a non-empty sequence of names, got {threats!r}")
    for threat in threats:
        check_choice("threat", threat, tuple(THREATS))
    for threat in threats:
        THREATS[threat].check_installed()
    if isinstance(budgets, int | float) or not budgets:
        raise ValueError(f"budgets must be a non-empty sequence of numbers, got {budgets!r}")
    for budget in budgets:
        check_positive("every budget", budget)
    check_positive("steps", steps, int)


def _tick(bar) -> Callable[..., None]:
    """An attack's ``callback``: one iterate done."""
    return lambda *_: bar.update()


def _progress(total: int, progress: bool | None):
    """A tqdm bar; ``progress=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    disable = None if progress is None else not progress
    return tqdm(total=total, desc="attack", unit="it", disable=disable, leave=False)


def run_pgd(predict, x, y, budget, threat, options, callback):
    """A pointwise threat's attack: PGD in the ``threat.cost`` ball of radius ``budget``."""
    return pgd(
        predict,
        x,
        y,
        eps=budget,
        norm=threat.cost,
        loss=options["pgd_loss"],
        restarts=options["restarts"],
        steps=options["steps"],
        batch_size=options["batch_size"],
        callback=callback,
    )


def run_autoattack(predict, x, y, budget, threat, options, callback):
    """An AutoAttack threat's attack: the standard version in the ``threat.cost`` ball of radius
    ``budget`` (needs the extra); its seed is drawn from the torch RNG, and ``callback`` is
    called ``threat.iterates(options)`` times in all, spread over the attacks."""
    total, names, done = threat.iterates(options), VERSIONS["standard"], [0]

    def tick(t, x_adv):
        while done[0] < round(t * total / len(names)):
            done[0] += 1
            callback(done[0], x_adv)

    return autoattack(
        predict,
        x,
        y,
        eps=budget,
        norm=threat.cost,
        batch_size=options["batch_size"],
        seed=int(torch.randint(2**31 - 1, ()).item()),
        callback=tick,
    )


def run_w_pgd(predict, x, y, budget, threat, options, callback):
    """A Wasserstein threat's attack: W-PGD in the ``W_order`` ball of radius ``budget``."""
    return w_pgd(
        predict,
        x,
        y,
        delta=budget,
        p=threat.order,
        cost=threat.cost,
        loss=options["w_loss"],
        steps=options["steps"],
        batch_size=options["batch_size"],
        callback=callback,
    )


def robustness(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threats: Sequence[str] = ("w2-linf", "linf"),
    budgets: Sequence[float] = (0.02, 0.05, 0.1),
    num_samples: int = 32,
    steps: int = 50,
    w_loss: str = "redlr",
    pgd_loss: str = "ce",
    restarts: int = 1,
    batch_size: int = 256,
    site: str = "obs",
    progress: bool | None = None,
) -> RobustnessReport:
    """Attack a classifier under every threat and budget; report clean and robust accuracy.

    With a ``guide`` the model is a Pyro classifier attacked through
    :func:`~pyro_otmdr.attacks.posterior_predictive` (``num_samples`` frozen draws; every member
    of an ensemble; the point of an ``AutoDelta``); for a guide that samples, every chosen input
    is re-evaluated with fresh draws too. With ``guide=None`` the model is any predictor
    ``x -> logits`` (an ``nn.Module``...). The torch RNG drives the draws and PGD's random
    starts: seed it (``pyro.set_rng_seed``) for a reproducible report.

    :param model: the Pyro model, or a predictor when ``guide`` is ``None``.
    :param guide: the guide, or ``None``.
    :param x: inputs in ``[0, 1]`` (the attacks' box), examples on dim 0.
    :param y: integer labels.
    :param threats: names from :data:`THREATS`.
    :param budgets: ``delta`` / ``eps`` values, in the units of the input box.
    :param num_samples: posterior draws of a sampling guide.
    :param steps: iterates of every attack (per restart for PGD).
    :param w_loss: the W-PGD loss (``"redlr"``, as Bai et al.).
    :param pgd_loss: the PGD loss (``"ce"``, as Madry et al.).
    :param restarts: PGD restarts.
    :param batch_size: examples per pass (memory only).
    :param site: the observed categorical site of a Pyro model.
    :param progress: a progress bar over budgets and iterates; ``None``: only on a terminal.
    :raises ValueError: for an unknown threat, a budget <= 0, and the attacks' own errors.

    Usage::

        import torch
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr import robustness
        from pyro_otmdr.bayes import bayesian

        net = torch.nn.Linear(4, 3)
        model = bayesian(net, num_data=32)
        guide = AutoNormal(model)
        x, y = torch.rand(32, 4), torch.randint(3, (32,))
        guide(x, y)                                    # set the autoguide up
        report = robustness(model, guide, x, y, threats=("w2-linf", "linf"), budgets=(0.05,),
                            num_samples=4, steps=3)
        assert report.robust_accuracy_fresh is not None   # re-evaluated with fresh draws
        report = robustness(net, None, x, y, steps=3)    # a plain network
        assert report.robust_accuracy_fresh is None       # deterministic: nothing to redraw
    """
    _check(threats, budgets, steps)
    fresh = None
    if guide is None:
        predict = model
    else:
        predict = posterior_predictive(model, guide, num_samples=num_samples, site=site)
        fresh = predict.redraw() if predict.kind == "sample" else None
    options = dict(
        steps=steps, w_loss=w_loss, pgd_loss=pgd_loss, restarts=restarts, batch_size=batch_size
    )
    budgets = [float(b) for b in budgets]
    report = _run(predict, fresh, x, y, list(threats), budgets, options, progress)
    report.settings = {
        **options,
        "protocol": "deterministic" if fresh is None else "frozen draws, fresh re-evaluation",
        "num_draws": getattr(predict, "num_draws", 1),
    }
    return report


def _run(predict, fresh, x, y, threats, budgets, options, progress) -> RobustnessReport:
    """Every threat at every budget, then Upsilon per threat."""
    size = options["batch_size"]
    keys = ("robust_accuracy", "robust_accuracy_fresh", "distance", "max_loss")
    out: dict[str, dict[str, list[float]]] = {k: {t: [] for t in threats} for k in keys}
    total = sum(THREATS[t].iterates(options) for t in threats) * len(budgets)
    with _progress(total, progress) as bar:
        for budget in budgets:
            for threat in threats:
                bar.set_postfix_str(f"{threat} {budget:g}")
                attack = THREATS[threat].runner()
                result = attack(predict, x, y, budget, THREATS[threat], options, _tick(bar))
                out["robust_accuracy"][threat].append(result.robust_accuracy)
                out["distance"][threat].append(result.distance)
                out["max_loss"][threat].append(result.max_loss)
                if fresh is not None:
                    accuracy = _accuracy(fresh, result.x_adv, y, size)
                    out["robust_accuracy_fresh"][threat].append(accuracy)
    upsilon = {}
    for threat in threats:
        order, cost = THREATS[threat].order, THREATS[threat].cost
        upsilon[threat] = w_sensitivity(predict, x, y, p=order, cost=cost, batch_size=size).upsilon
    return RobustnessReport(
        threats=threats,
        budgets=budgets,
        clean_accuracy=result.clean_accuracy,
        robust_accuracy=out["robust_accuracy"],
        distance=out["distance"],
        max_loss=out["max_loss"],
        upsilon=upsilon,
        robust_accuracy_fresh=None if fresh is None else out["robust_accuracy_fresh"],
        clean_accuracy_fresh=None if fresh is None else _accuracy(fresh, x, y, size),
    )
