"""The configuration of one run: :class:`ExperimentConfig`, each setting declared once.

The ``otmdr`` command builds its flags from these declarations (see :mod:`.settings`), and this
module imports no torch, so ``otmdr --help`` answers at once. What a configuration becomes:
:mod:`.builders` (the guide, the loss, the optimiser), :mod:`.experiment` (the objects of one
run) and :mod:`.runs` (training, evaluation, attacks, shifts).

Two conventions worth knowing:

* ``rho=None`` takes the paper's radius for the guide (:data:`DEFAULT_RHO`): 0.05 for the point
  estimate and the ensemble (the CIFAR-10 value), 0.005 for the Gaussian (the BNN value).
* ``data_robust`` (one of :data:`DATA_ROBUST`) makes the likelihood data-robust, under any
  ``method``: the loss is the ELBO, wrapped by the data-robust loss, wrapped by SAM or OT-MDR;
  the attack then runs once per step.

Usage::

    from pyro_otmdr.experiments.config import ExperimentConfig

    config = ExperimentConfig(guide="delta", method="otmdr", data_robust="trades", eps=0.1)
    assert config.resolved().rho == 0.05          # the guide's default radius
    assert ExperimentConfig.from_dict(config.to_dict()) == config
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .names import (
    DATA_ROBUST,
    DATASET_NAMES,
    DEFAULT_RHO,
    GEOMETRIES,
    GUIDES,
    METHODS,
    MODEL_NAMES,
    OPTIMIZERS,
    REGRESSION_DATASETS,
    SCHEDULES,
    WDAT_ATTACK_LOSSES,
    WDAT_OUTERS,
    users_of,
)
from .settings import (
    Choice,
    Flag,
    IntList,
    Number,
    Text,
    check_setting,
    setting,
)

__all__ = [
    "DATA_ROBUST",
    "DEFAULT_LR",
    "DEFAULT_RHO",
    "GUIDES",
    "METHODS",
    "OPTIMIZERS",
    "RUNTIME_KEYS",
    "SCHEDULES",
    "ExperimentConfig",
]

#: The learning rate when ``--lr`` is not given, per optimiser (SGD's per example).
DEFAULT_LR: dict[str, float] = {"adam": 1e-2, "sgd": 0.1}

#: The paper's ascent-noise default (``OTMDR(noise_std=...)``): no noise.
_NO_NOISE = 0.0

_DATA, _METHOD, _ROBUST, _OPT, _RUN = (
    "data and model",
    "method",
    "data-robust training",
    "optimisation",
    "run",
)
_POSITIVE_INT = Number(int, low=0, open_low=True)
_COUNT = Number(int, low=0)
_POSITIVE = Number(float, low=0, open_low=True)
_NON_NEGATIVE = Number(float, low=0)
_BOX = Number(float, low=0, open_low=True, high=1, note=", the units of the inputs' [0, 1] box")
_RHO_DEFAULTS = ", ".join(f"{guide} {rho}" for guide, rho in DEFAULT_RHO.items())


def _lr_of_optimizer(values: dict[str, Any]) -> float:
    return DEFAULT_LR[values["optimizer"]]


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one run; the defaults are the digits MLP of the README.

    ``rho=None`` means :data:`DEFAULT_RHO` of the guide; :meth:`resolved` fills it in and checks
    every value. ``width`` is the first stage's channels of ``resnet10``/``resnet18`` and of
    ``cnn`` (whose stages are ``width, 2 width, 4 width``). ``val_size`` holds out that many
    CIFAR training images as a validation split (digits always has one).

    ``data_robust`` is one of :data:`DATA_ROBUST` (``"none"``: the plain likelihood). Its
    parameters, in the units of the inputs' ``[0, 1]`` box: ``eps``, the linf radius of ``at``,
    ``trades`` and ``armor``; ``delta``, the W2 budget of ``wdat``; ``beta``, the KL weight of
    ``trades`` and ``wdat``; ``budget``, the KL budget of ``armor``'s dual. Configurations saved
    before these fields existed load with the defaults (no data-robust loss).

    Each field is declared once, with its flag of the ``otmdr`` command (:mod:`.settings`).

    Usage::

        from pyro_otmdr.experiments import ExperimentConfig

        config = ExperimentConfig(guide="delta", method="otmdr", data_robust="trades", eps=0.1)
        assert config.resolved().rho == 0.05     # the guide's default radius
    """

    dataset: str = setting("digits", _DATA, "data set", Choice(DATASET_NAMES, "data set"))
    data_dir: str | None = setting(
        None, _DATA, "folder holding the CIFAR archive (default ./data)", Text(), optional=True
    )
    download: bool = setting(False, _DATA, "let torchvision fetch CIFAR", Flag())
    val_size: int = setting(0, _DATA, "CIFAR training images held out for validation", _COUNT)
    model: str = setting("mlp", _DATA, "network", Choice(MODEL_NAMES, "model"))
    hidden: tuple[int, ...] = setting((128,), _DATA, "mlp sizes, e.g. 256,256", IntList())
    width: int | None = setting(
        None, _DATA, "first-stage channels of cnn/resnet10/18", _POSITIVE_INT, optional=True
    )
    guide: str = setting("normal", _METHOD, "guide", Choice(GUIDES, "guide"), grid="own")
    method: str = setting("otmdr", _METHOD, "method", Choice(METHODS, "method"), grid="own")
    rho: float | None = setting(
        None,
        _METHOD,
        f"first radius (default per guide: {_RHO_DEFAULTS})",
        _POSITIVE,
        optional=True,
        grid="list",
        grid_help="first radii, e.g. 0.01,0.02,0.05: with several, the one with the lowest "
        f"validation NLL is chosen per guide and method (default: {_RHO_DEFAULTS})",
    )
    rho2: float | None = setting(
        None, _METHOD, "second radius (default 2 * rho)", _POSITIVE, optional=True
    )
    n_particles: int = setting(1, _METHOD, "OT-MDR particles K", _POSITIVE_INT, flag="--particles")
    num_members: int = setting(5, _METHOD, "ensemble members", _POSITIVE_INT, flag="--members")
    noise_std: float = setting(
        _NO_NOISE, _METHOD, "ascent noise std", _NON_NEGATIVE, flag="--noise"
    )
    geometry: str = setting(
        "global",
        _METHOD,
        "how the ascent move spends rho: global (the paper's), layer (rho times each tensor's "
        "norm), elementwise (ASAM), posterior (a Gaussian guide's means in units of its scales)",
        Choice(GEOMETRIES, "geometry"),
        grid="list",
        grid_help=f"comma-separated geometries from {', '.join(GEOMETRIES)}, a grid dimension "
        "(rho is chosen per geometry on validation) (default global)",
    )
    jit: bool = setting(
        False,
        _METHOD,
        "compile the ELBO's passes (JitTrace_ELBO): one graph per batch shape, the same losses "
        "to float32 rounding; for static models",
        Flag(),
    )
    data_robust: str = setting(
        "none",
        _ROBUST,
        "data-robust loss around the ELBO, under --method",
        Choice(DATA_ROBUST, "data-robust loss"),
        flag="--data-robust",
        grid="list",
        grid_help=f"comma-separated data-robust losses from {', '.join(DATA_ROBUST)}, a grid "
        "dimension; anything but none adds the robust-accuracy columns (default none)",
    )
    eps: float = setting(0.1, _ROBUST, f"linf radius of {users_of('eps')}", _BOX)
    delta: float = setting(0.1, _ROBUST, f"W2 budget of {users_of('delta')}", _BOX)
    beta: float = setting(6.0, _ROBUST, f"KL weight of {users_of('beta')}", _NON_NEGATIVE)
    budget: float = setting(0.02, _ROBUST, f"KL budget of {users_of('budget')}'s dual", _POSITIVE)
    attack_loss: str = setting(
        "redlr",
        _ROBUST,
        f"training attack loss of {users_of('attack_loss')}: redlr (the paper's: a misclassified "
        "example gets no budget), ce, or kl (TRADES' ascent, budget from CE)",
        Choice(WDAT_ATTACK_LOSSES, "attack loss"),
    )
    outer: str = setting(
        "trades",
        _ROBUST,
        f"outer loss of {users_of('outer')}: trades (CE at x + beta KL at the attacked x') or "
        "adversarial (CE at the attacked x')",
        Choice(WDAT_OUTERS, "outer loss"),
    )
    budget_subset: int = setting(
        10,
        _ROBUST,
        f"batches whose mean sensitivity starts {users_of('budget_subset')}'s running estimate "
        "(then a moving average)",
        _COUNT,
    )
    epochs: int = setting(30, _OPT, "epochs", _POSITIVE_INT)
    batch_size: int = setting(128, _OPT, "batch size", Number(int, low=2))
    optimizer: str = setting("adam", _OPT, "optimiser", Choice(OPTIMIZERS, "optimizer"))
    lr: float = setting(
        1e-2,
        _OPT,
        "learning rate (default 0.01 with adam, 0.1 with sgd, per example)",
        _POSITIVE,
        omitted=_lr_of_optimizer,
    )
    momentum: float = setting(0.9, _OPT, "SGD momentum", _NON_NEGATIVE)
    schedule: str = setting("cosine", _OPT, "per-epoch lr", Choice(SCHEDULES, "schedule"))
    prior_scale: float = setting(1.0, _DATA, "N(0, s^2) prior", _POSITIVE)
    init_scale: float = setting(1e-3, _METHOD, "AutoNormal's initial scales", _POSITIVE)
    num_samples: int = setting(32, _RUN, "AutoNormal test draws", _POSITIVE_INT)
    seed: int = setting(0, _RUN, "seed of everything", _COUNT, grid="own")
    device: str = setting(
        "cpu",
        _RUN,
        "where to run (default: cuda when available)",
        Text(choices=("cpu", "cuda")),
        cli_default=None,
    )
    num_workers: int = setting(0, _RUN, "DataLoader worker processes", _COUNT, flag="--workers")

    def resolved(self) -> ExperimentConfig:
        """A copy with ``rho`` filled in from the guide; raises ``ValueError`` for a value its
        setting does not take and for combinations that do not go together (before anything
        is built or trained)."""
        for spec in fields(self):
            check_setting(spec, getattr(self, spec.name))
        if self.width is not None and self.model not in ("cnn", "resnet10", "resnet18"):
            raise ValueError(f"width applies to cnn, resnet10 and resnet18, not {self.model!r}")
        if self.dataset in REGRESSION_DATASETS and self.model != "mlp":
            raise ValueError(
                f"{self.dataset} is a regression data set of flat features: use model 'mlp', "
                f"not {self.model!r}"
            )
        if self.dataset in REGRESSION_DATASETS and self.data_robust != "none":
            raise ValueError(
                f"the data-robust losses attack a classifier's inputs; {self.dataset} is a "
                "regression data set: use data_robust 'none'"
            )
        if self.geometry == "posterior" and self.guide != "normal" and self.method != "svi":
            raise ValueError(
                f"geometry 'posterior' moves a Gaussian guide's means in units of its scales; "
                f"the {self.guide!r} guide has none: use --guide normal or another geometry"
            )
        _check_data_robust_builds(self)
        rho = DEFAULT_RHO[self.guide] if self.rho is None else self.rho
        return replace(self, rho=rho, hidden=tuple(int(h) for h in self.hidden))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``hidden`` as a list)."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    def fingerprint(self) -> str:
        """The SHA-256 of the settings that decide the results: all but :data:`RUNTIME_KEYS`.

        A checkpoint records it, so a run directory whose ``config.json`` was edited is caught.
        """
        decisive = {
            k: v
            for k, v in self.to_dict().items()
            if k not in RUNTIME_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])
        }
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """The inverse of :meth:`to_dict`; unknown keys and values of the wrong type are errors."""
        if not isinstance(values, dict):
            raise ValueError(f"a configuration is a JSON object, got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known: {sorted(known)}")
        for name, value in values.items():
            _check_type(name, known[name].type, value)
        values = dict(values)
        if "hidden" in values:
            values["hidden"] = tuple(values["hidden"])
        return cls(**values)


#: Where and how a run executes, not what it computes: ``config.json`` may change these (another
#: device, a moved data folder) and still match the checkpoint's fingerprint.
RUNTIME_KEYS = ("device", "num_workers", "data_dir", "download")

#: Settings added after checkpoints began to record fingerprints, with the value that gives the
#: behaviour from before them: a setting at that value is left out of the fingerprint, so a run
#: directory written before it existed still matches its checkpoint.
LATER_KEYS: dict[str, Any] = {
    "geometry": "global",
    "attack_loss": "redlr",
    "outer": "trades",
    "budget_subset": 10,
    "jit": False,
}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "None": (type(None),),
}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """``ValueError`` unless the JSON ``value`` of field ``name`` fits its ``annotation``."""
    if annotation.startswith("tuple"):  # tuple[int, ...]: a list of ints in JSON
        ok = isinstance(value, list | tuple) and all(_fits(v, (int,)) for v in value)
    else:
        ok = _fits(
            value, tuple(t for part in annotation.split("|") for t in _JSON_TYPES[part.strip()])
        )
    if not ok:
        raise ValueError(f"configuration key {name!r} must be {annotation}, got {value!r}")


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def _check_data_robust_builds(config: ExperimentConfig) -> None:
    """The data-robust loss's own checks of its parameters, by building it (imports torch)."""
    if config.data_robust == "none":
        return
    from .builders import make_data_robust

    try:
        make_data_robust(config)
    except TypeError as err:
        raise ValueError(f"data-robust loss {config.data_robust!r}: {err}") from None


def _moved() -> dict[str, str]:
    """Names this module held before it was split, and their homes now (deprecated here): the
    package's table of homes, and two helpers it does not export."""
    from . import _HOMES

    return {
        **{name: home for name, home in _HOMES.items() if home != "config"},
        "dataset_tensors": "experiment",
        "warm_up": "experiment",
    }


def __getattr__(name: str) -> Any:
    home = _moved().get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new = f"{__package__}.{home}"
    warnings.warn(
        f"{__name__}.{name} is deprecated; import it from {new} (or pyro_otmdr.experiments)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(new), name)
