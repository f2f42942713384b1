"""Calibration under distribution shift: corrupted test sets of growing severity.

In the spirit of CIFAR-10-C (Hendrycks & Dietterich, 2019) and of Ovadia et al., "Can you trust
your model's uncertainty?" (NeurIPS 2019): each shift has five severities, applied in the data's
``[0, 1]`` box to images ``(N, C, H, W)`` or to flat square images ``(N, H*W)`` (digits). Severity
0 is the clean input. Shifts are seeded, so a test set is the same for every model.

=================  ==================================================  =========================
shift              what it does                                        severity 1 .. 5
=================  ==================================================  =========================
gaussian_noise     adds ``N(0, s^2)`` per pixel, clamps to ``[0, 1]``  s = .04 .06 .08 .09 .10
gaussian_blur      a Gaussian kernel of width ``sigma`` (torchvision)  sigma = .4 .6 .7 .8 1.0
rotation           rotates each image by +-a degrees (random sign)     a = 5 10 15 20 25
contrast           ``(x - mean) * c + mean`` per image                 c = .75 .5 .4 .3 .15
=================  ==================================================  =========================

The noise, blur and contrast values are CIFAR-10-C's; rotation (from CIFAR-10-P) has no
published severity table, these angles are ours.

Usage::

    import torch
    from pyro.infer.autoguide import AutoDelta
    from pyro_otmdr.bayes import bayesian
    from pyro_otmdr.evaluation.shift import evaluate_shift, shift_inputs

    model = bayesian(torch.nn.Linear(64, 10), num_data=32)   # digits: flat 8x8 images
    guide = AutoDelta(model)
    x_test, y_test = torch.rand(32, 64), torch.randint(10, (32,))
    guide(x_test, y_test)                # set the autoguide up (train it with SVI first)
    x_shifted = shift_inputs(x_test, "gaussian_blur", severity=3, seed=0)
    assert x_shifted.shape == x_test.shape
    result = evaluate_shift(model, guide, x_test, y_test, shifts=("rotation", "contrast"))
    print(result.metrics["rotation"][5]["ece"])   # severity 0 is the clean test set
    result.plot("shift.png")
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from tqdm.auto import tqdm

from .predictive import evaluate

__all__ = ["SEVERITIES", "SHIFTS", "ShiftResult", "evaluate_shift", "shift_inputs"]

_STRENGTH = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "rotation": (5.0, 10.0, 15.0, 20.0, 25.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
}
SHIFTS = tuple(_STRENGTH)
SEVERITIES = (1, 2, 3, 4, 5)
METRICS = ("accuracy", "nll", "ece")


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` as it is, ``(N, H*W)`` as ``(N, 1, H, W)``; anything else is refused."""
    if x.dim() == 4:
        return x
    side = math.isqrt(x.shape[-1]) if x.dim() == 2 else 0
    if x.dim() == 2 and side * side == x.shape[-1]:
        return x.reshape(x.shape[0], 1, side, side)
    raise ValueError(
        f"shifts need images (N, C, H, W) or flat square images (N, H*W); got {tuple(x.shape)}"
    )


def _noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return images + std * noise.to(images.device)


def _blur(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    kernel = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def _rotation(images: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    clockwise = torch.rand(images.shape[0], generator=generator) < 0.5
    out = TF.rotate(images, degrees, interpolation=TF.InterpolationMode.BILINEAR)
    other = TF.rotate(images, -degrees, interpolation=TF.InterpolationMode.BILINEAR)
    out[clockwise.to(images.device)] = other[clockwise.to(images.device)]
    return out


def _contrast(images: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    mean = images.mean(dim=(-3, -2, -1), keepdim=True)
    return (images - mean) * factor + mean


_APPLY: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _noise,
    "gaussian_blur": _blur,
    "rotation": _rotation,
    "contrast": _contrast,
}


def shift_inputs(x: torch.Tensor, shift: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """A shifted copy of ``x`` (inputs in ``[0, 1]``), same shape, dtype and device.

    :param shift: one of :data:`SHIFTS`.
    :param severity: 0 (the clean input, returned as a copy) to 5.
    :param seed: the seed of the shift's randomness (noise, rotation signs).
    :raises ValueError: for an unknown shift, a severity outside 0..5, or inputs outside [0, 1].
    """
    if shift not in _APPLY:
        raise ValueError(f"unknown shift {shift!r}; choose from {', '.join(SHIFTS)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be an int in 0..5, got {severity!r}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("shifts act on inputs in [0, 1]; rescale the data (pixels / 255)")
    if severity == 0:
        return x.clone()
    generator = torch.Generator().manual_seed(seed)
    images = _as_images(x.detach())
    shifted = _APPLY[shift](images, _STRENGTH[shift][severity - 1], generator)
    return shifted.clamp(0.0, 1.0).reshape(x.shape).to(x.dtype)


@dataclass
class ShiftResult:
    """Accuracy, NLL and ECE per shift and severity (severity 0: the clean test set).

    :ivar metrics: ``metrics[shift][severity]`` is a dict with ``accuracy``, ``nll``, ``ece``.

    Usage::

        import torch
        from pyro.infer.autoguide import AutoDelta
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.evaluation.shift import evaluate_shift

        model = bayesian(torch.nn.Linear(64, 10), num_data=32)
        guide = AutoDelta(model)
        x, y = torch.rand(32, 64), torch.randint(10, (32,))
        guide(x, y)                                   # set the autoguide up
        result = evaluate_shift(model, guide, x, y, shifts=("gaussian_noise",),
                                severities=(1, 5))
        nll = result.mean_over_shifts()["nll"]   # mean over every shift and severity >= 1
        result.to_json("shift.json"); result.plot("shift.png")
        assert sorted(result.metrics["gaussian_noise"]) == [0, 1, 5]
    """

    metrics: dict[str, dict[int, dict[str, float]]]

    def mean_over_shifts(self) -> dict[str, float]:
        """Each metric averaged over every shift and every severity >= 1."""
        rows = [m for per in self.metrics.values() for s, m in per.items() if s > 0]
        return {name: sum(r[name] for r in rows) / len(rows) for name in METRICS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: severities as string keys, and the mean over shifts."""
        per = {k: {str(s): m for s, m in v.items()} for k, v in self.metrics.items()}
        return {"shifts": per, "mean_over_shifts": self.mean_over_shifts()}

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON at ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def to_dataset(self):
        """An ``xarray.Dataset`` with dims ``(shift, severity)``, for a DataTree group."""
        import xarray as xr

        shifts = list(self.metrics)
        severities = sorted({s for per in self.metrics.values() for s in per})
        data = {
            name: (
                ("shift", "severity"),
                [
                    [self.metrics[k].get(s, {}).get(name, math.nan) for s in severities]
                    for k in shifts
                ],
            )
            for name in METRICS
        }
        return xr.Dataset(data, coords={"shift": shifts, "severity": severities})

    def plot(self, path: str | Path, *, dpi: int = 80) -> Path:
        """Accuracy, NLL and ECE against severity, one line per shift, as a PNG at ``path``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 3.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(METRICS))
        for ax, name in zip(axes, METRICS, strict=True):
            for shift, per in self.metrics.items():
                severities = sorted(per)
                ax.plot(severities, [per[s][name] for s in severities], marker="o", label=shift)
            ax.set(xlabel="severity", ylabel=name, title=name)
            ax.set_xticks(range(0, max(SEVERITIES) + 1))
        axes[0].legend(fontsize="small")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=dpi)
        return path


def evaluate_shift(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    shifts: Sequence[str] = SHIFTS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    progress: bool | None = None,
    **evaluate_kwargs: Any,
) -> ShiftResult:
    """:func:`~pyro_otmdr.evaluation.evaluate` on the clean and on every shifted test set.

    The clean metrics are severity 0 of every shift. ``evaluate_kwargs`` go to ``evaluate``
    (``num_samples``, ``batch_size``, ``site``, ...). Each evaluation's posterior draws come from
    the global RNG, so seed it (``pyro.set_rng_seed``) for a reproducible table.

    :param progress: a progress bar over the evaluations; default: only on a terminal.
    """
    for shift in shifts:
        if shift not in _APPLY:
            raise ValueError(f"unknown shift {shift!r}; choose from {', '.join(SHIFTS)}")
    severities = sorted(set(severities) - {0})
    if any(s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be in 1..5, got {list(severities)}")
    clean = _summary(evaluate(model, guide, x, y, **evaluate_kwargs))
    metrics = {shift: {0: clean} for shift in shifts}
    jobs = [(shift, s) for shift in shifts for s in severities]
    quiet = None if progress is None else not progress  # tqdm: None = off unless a terminal
    for shift, severity in tqdm(jobs, desc="shifts", disable=quiet):
        shifted = shift_inputs(x, shift, severity, seed=seed)
        metrics[shift][severity] = _summary(evaluate(model, guide, shifted, y, **evaluate_kwargs))
    return ShiftResult(metrics)


def _summary(result) -> dict[str, float]:
    return {name: result.metrics[name] for name in METRICS}
