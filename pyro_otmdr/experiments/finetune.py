"""Fine-tuning a finished run: a new run that starts from another run's final parameters.

WDAT's protocol fine-tunes a pre-trained robust network: start from a finished robust model,
re-initialise its last linear layer or add small random perturbations to its weights, then train
a few epochs with the new loss. :func:`finetune` does that in one call and writes a new run
directory (``otmdr finetune`` on the command line):

* its configuration is the parent's ``config.json`` with the given settings on top; the settings
  that define the model and guide (:data:`MODEL_KEYS`) must stay the parent's, and so must the
  seed where it draws the data split (digits, diabetes, CIFAR's ``val_size`` hold-out);
* it starts from the guide parameters (and BatchNorm buffers) of the parent's ``checkpoint.pt``,
  read once, with a fresh optimiser, a fresh schedule and fresh loss state; epochs count from 0;
* ``reinit_last`` puts the last linear layer (:func:`last_linear_sites`) back at the values a
  fresh run of the new configuration starts from; ``weight_noise`` adds
  ``N(0, (weight_noise * std(w))^2)`` to every weight tensor ``w``, biases excepted;
* the parent's directory is only read, and :data:`PARENT_FILE` (``parent.json``) in the new
  directory records where it started: the parent's path, the SHA-256 of its checkpoint file,
  ``reinit_last`` and ``weight_noise`` (:func:`read_parent_record`).

An interrupted fine-tuning continues from its own checkpoint with ``otmdr train --resume NEW``.

Usage::

    from pyro_otmdr.experiments import finetune, read_parent_record
    from pyro_otmdr.experiments.cli import main

    tiny = ["--guide", "delta", "--method", "svi", "--epochs", "1", "--hidden", "8",
            "--num-samples", "2", "--device", "cpu", "--quiet"]
    main(["train", *tiny, "--data-robust", "at", "--out", "runs/at"])
    metrics = finetune("runs/at", "runs/at-wdat", data_robust="wdat", epochs=1, device="cpu")
    assert read_parent_record("runs/at-wdat")["weight_noise"] == 0.0 and metrics["accuracy"] > 0

Command line::

    otmdr train --data-robust at --out runs/at
    otmdr finetune runs/at --data-robust wdat --epochs 5 --out runs/at-wdat --reinit-last
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoNormal
from torch import nn

from ..bayes.members import is_ensemble
from ..workflow.checkpoint import CheckpointError, decode_checkpoint
from .cli.parser import RunError, UsageError
from .cli.rundir import (
    _check_matches,
    _read_config,
    clear_run,
    holds_run,
    resolve_device,
    train_into,
    write_json,
)
from .cli.runlock import LOCK_NAME, run_lock
from .config import ExperimentConfig
from .experiment import Experiment, build_experiment, warm_up
from .settings import setting_of

__all__ = [
    "MODEL_KEYS",
    "PARENT_FILE",
    "finetune",
    "finetune_config",
    "last_linear_sites",
    "read_parent_record",
    "start_from",
]

#: The settings that define the model and the guide, and so the parameters' names and shapes:
#: a fine-tuned run keeps its parent's.
MODEL_KEYS: tuple[str, ...] = (
    "dataset",
    "model",
    "hidden",
    "width",
    "guide",
    "num_members",
    "prior_scale",
    "init_scale",
)

#: The record of the parent in a fine-tuned run's directory.
PARENT_FILE = "parent.json"

#: The data sets whose train/val/test split the seed draws (``experiment._load_splits``): a
#: fine-tuned run with another seed would be tested on examples its parent trained on.
_SEEDED_SPLITS = ("digits", "diabetes")

_RECORD_KEYS = ("run_dir", "checkpoint_sha256", "reinit_last", "weight_noise")


@dataclass
class _Parent:
    """What a finished run gives its fine-tuned child: read once from its directory."""

    run_dir: Path
    config: ExperimentConfig
    sha256: str
    epoch: int
    step: int
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]


# -- configuration --------------------------------------------------------------------------------


def _flag(name: str) -> str:
    spec = ExperimentConfig.__dataclass_fields__[name]
    return setting_of(spec).flag_for(spec)


def finetune_config(parent: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    """The configuration of a run fine-tuned from a run of configuration ``parent``.

    The parent's values, with ``overrides`` (fields of :class:`ExperimentConfig`) on top. A
    setting whose default is computed from others (``lr``, from ``optimizer``) and that the
    parent left at its computed default follows the new one (``optimizer="sgd"`` alone gives
    SGD's rate). The result is resolved and checked.

    :raises UsageError: for an unknown setting, a value its setting does not take, an override
        of :data:`MODEL_KEYS` (the model would not match the parent's parameters), or another
        seed where the seed draws the data split (digits, diabetes, CIFAR with ``val_size``).

    Usage::

        from pyro_otmdr.experiments import ExperimentConfig, finetune_config

        parent = ExperimentConfig(guide="delta", data_robust="at", epochs=30).resolved()
        config = finetune_config(parent, data_robust="wdat", delta=0.05, epochs=5)
        assert (config.guide, config.data_robust, config.epochs) == ("delta", "wdat", 5)
        assert finetune_config(parent, optimizer="sgd").lr == 0.1   # SGD's default rate
    """
    known = {spec.name: spec for spec in fields(ExperimentConfig)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UsageError(f"unknown settings {unknown}; the settings are {sorted(known)}")
    parent = parent.resolved()
    before = {name: getattr(parent, name) for name in known}
    values = {**before, **overrides}
    for name, spec in known.items():
        omitted = setting_of(spec).omitted
        if omitted is not None and name not in overrides and before[name] == omitted(before):
            values[name] = omitted(values)
    try:
        config = ExperimentConfig(**values).resolved()
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    for name in MODEL_KEYS:
        if getattr(config, name) != before[name]:
            raise UsageError(
                f"{name} ({_flag(name)}) {getattr(config, name)!r} would change the model: the "
                f"parent was trained with {before[name]!r}, and a fine-tuned run starts from its "
                f"parameters, so the model would not match them; leave it out (the parent fixes "
                f"{', '.join(MODEL_KEYS)})"
            )
    if config.val_size != parent.val_size:
        why = "the validation hold-out would differ from the one the parent never trained on"
    elif config.seed != parent.seed and parent.dataset in _SEEDED_SPLITS:
        why = f"{parent.dataset} draws its train/val/test split from the seed"
    elif config.seed != parent.seed and parent.val_size > 0:
        why = f"{parent.dataset} draws its validation hold-out (val_size) from the seed"
    else:
        return config
    name = "val_size" if config.val_size != parent.val_size else "seed"
    raise UsageError(
        f"{name} ({_flag(name)}) {getattr(config, name)!r} would change the data split: {why}, "
        "so the fine-tuned run would be evaluated on examples its parent trained on; keep the "
        f"parent's {name} {getattr(parent, name)!r}"
    )


# -- the parent -----------------------------------------------------------------------------------


def _parent_dir(run_dir: Path) -> Path:
    """``run_dir``, or the error that says why it cannot be a parent (before anything is read)."""
    if not run_dir.is_dir():
        raise UsageError(
            f"there is no run directory {run_dir}: give the directory of a finished "
            "'otmdr train' (or 'otmdr finetune') run"
        )
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"{run_dir} is not a run directory of 'otmdr train': no config.json")
    if not (run_dir / "checkpoint.pt").is_file():
        raise RunError(
            f"{run_dir} has no checkpoint.pt: its training stopped before the first epoch "
            "ended; train it to the end first (otmdr train ... --overwrite --out "
            f"{run_dir}), then fine-tune it"
        )
    return run_dir


@contextlib.contextmanager
def _read_only_lock(run_dir: Path) -> Iterator[None]:
    """A shared lock on the parent's ``.lock``, if it has one, taken without writing anything:
    refused while another ``otmdr`` process writes the parent (training or evaluating it)."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file (or an unreadable one): nobody to wait for
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(
                f"{run_dir} is in use by another otmdr process ({holder}): wait until it ends, "
                "then fine-tune it"
            ) from None
        yield
    finally:
        os.close(fd)


def _decode(data: bytes, path: Path) -> dict[str, Any]:
    """The contents of the parent checkpoint's bytes, checked as ``load_checkpoint`` checks them."""
    try:
        contents = decode_checkpoint(data, path)
    except CheckpointError as err:
        raise RunError(str(err)) from None
    if not isinstance(contents.get("param_store"), dict):
        raise RunError(f"{path} holds no parameters (it was saved without the param store)")
    return contents


def _read_parent(run_dir: Path, config: ExperimentConfig) -> _Parent:
    """Read the parent's ``checkpoint.pt`` once (bytes, SHA-256, contents) and check that it is
    the final checkpoint of the configuration ``config`` (its ``config.json``)."""
    path = run_dir / "checkpoint.pt"
    with _read_only_lock(run_dir):
        data = path.read_bytes()
    contents = _decode(data, path)
    extra = contents.get("extra") or {}
    try:
        _check_matches(config, extra, run_dir / "config.json")
    except ValueError as err:  # CheckpointError
        raise RunError(str(err)) from None
    epoch = contents["epoch"]
    if epoch < config.epochs:
        raise RunError(
            f"{run_dir} has not finished training: its checkpoint is after epoch {epoch} of "
            f"{config.epochs}; finish it first with 'otmdr train --resume {run_dir}', then "
            "fine-tune it"
        )
    return _Parent(
        run_dir=run_dir,
        config=config,
        sha256=hashlib.sha256(data).hexdigest(),
        epoch=epoch,
        step=contents["step"],
        params=dict(contents["param_store"]["params"]),
        buffers=dict(extra.get("model_buffers") or {}),
    )


# -- the guide's parameters -----------------------------------------------------------------------


def last_linear_sites(experiment: Experiment) -> tuple[str, ...]:
    """The sample (or param) sites of the network's last linear layer, e.g.
    ``("net.2.weight", "net.2.bias")`` for the MLP, ``("net.fc.weight", "net.fc.bias")`` for the
    ResNets.

    The last linear layer is the last ``torch.nn.Linear`` the network's forward pass calls, and
    it must give the network's output (its output tensor is the network's). It is found by one
    forward pass on two training inputs, in eval mode, with torch's RNG forked (the run's RNG
    and BatchNorm statistics stay as they were).

    :raises UsageError: if the network has no such layer (no ``Linear``, or one whose output is
        transformed further).

    Usage::

        from pyro_otmdr.experiments import ExperimentConfig, build_experiment, last_linear_sites

        experiment = build_experiment(ExperimentConfig(hidden=(16,), epochs=1))
        assert last_linear_sites(experiment) == ("net.2.weight", "net.2.bias")
    """
    model, net = experiment.model, experiment.model.net
    calls: list[tuple[str, Any]] = []

    def record(name: str) -> Callable[..., None]:
        return lambda module, inputs, output: calls.append((name, output))

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in net.named_modules()
        if isinstance(module, nn.Linear)
    ]
    x = experiment.split_tensors("train", on_device=True)[0][:2]
    training = net.training
    devices = [experiment.device] if experiment.device.type == "cuda" else []
    try:
        net.eval()
        with torch.random.fork_rng(devices=devices), pyro.poutine.block(), torch.no_grad():
            output = net(model.input_transform(x))
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    config = experiment.config
    if not calls or calls[-1][1] is not output:
        what = "calls no torch.nn.Linear" if not calls else "transforms its last Linear's output"
        raise UsageError(
            f"--reinit-last: the {config.model} network {what}, so it has no identifiable last "
            "linear layer to re-initialise; fine-tune it without --reinit-last (--weight-noise "
            "perturbs every weight instead)"
        )
    owner = "net" if not calls[-1][0] else f"net.{calls[-1][0]}"
    sites = [*model.random_sites, *model.point_params]
    return tuple(site for site in sites if site.rpartition(".")[0] == owner)


def _guide_names(experiment: Experiment, site: str) -> list[tuple[str, str]]:
    """The param-store names that hold ``site``'s guide values, each with its role: ``value``
    (a point estimate, one per ensemble member, or a point parameter), ``loc`` or ``scale``
    (AutoNormal)."""
    guide = experiment.guide
    if site in experiment.model.point_params:
        return [(site, "value")]
    if isinstance(guide, AutoNormal):
        prefix = guide._pyro_name
        return [(f"{prefix}.locs.{site}", "loc"), (f"{prefix}.scales.{site}", "scale")]
    if is_ensemble(guide):
        return [(f"{member._pyro_name}.{site}", "value") for member in guide.members]
    return [(f"{guide._pyro_name}.{site}", "value")]


def _leaves() -> dict[str, torch.Tensor]:
    """The param store's unconstrained leaves by name."""
    return dict(pyro.get_param_store().named_parameters())


@torch.no_grad()
def _load_parameters(parent: _Parent, keep: set[str]) -> None:
    """Copy the parent's unconstrained parameters into the param store, bit for bit, but those
    named in ``keep`` (left at the fresh run's initial values)."""
    leaves = _leaves()
    missing, extra = (
        sorted(set(leaves) - set(parent.params)),
        sorted(set(parent.params) - set(leaves)),
    )
    if missing or extra:
        raise RunError(
            f"the parameters of {parent.run_dir / 'checkpoint.pt'} do not match the model its "
            f"config.json builds (missing there: {missing[:3]}, unknown here: {extra[:3]}): "
            "fine-tune a run of this version of pyro_otmdr"
        )
    for name, leaf in leaves.items():
        value = parent.params[name]
        if tuple(value.shape) != tuple(leaf.shape):
            raise RunError(
                f"parameter {name!r} has shape {tuple(value.shape)} in the parent's checkpoint "
                f"but {tuple(leaf.shape)} here: the model would not match"
            )
        if name not in keep:
            leaf.copy_(value.to(device=leaf.device, dtype=leaf.dtype))


@torch.no_grad()
def _add_weight_noise(
    experiment: Experiment, std: float, seed: int, skip: tuple[str, ...]
) -> list[str]:
    """Add ``std * w.std(correction=0) * z`` to each weight tensor ``w`` (the random sites named
    ``*.weight``, not ``skip``): the point values, each member's, or AutoNormal's means. ``z`` is
    standard normal from a CPU generator seeded with ``seed``, drawn tensor by tensor in the
    order of ``model.random_sites`` (members in order). Returns the sites perturbed."""
    generator = torch.Generator().manual_seed(seed)
    leaves, noised = _leaves(), []
    for site in experiment.model.random_sites:
        if not site.endswith(".weight") or site in skip:
            continue
        for name, role in _guide_names(experiment, site):
            if role == "scale":
                continue
            leaf = leaves[name]
            z = torch.randn(leaf.shape, generator=generator, dtype=leaf.dtype).to(leaf.device)
            leaf.add_((std * leaf.std(correction=0)) * z)
        noised.append(site)
    return noised


def _check_weight_noise(weight_noise: Any) -> float:
    ok = isinstance(weight_noise, int | float) and not isinstance(weight_noise, bool)
    if not ok or not math.isfinite(weight_noise) or weight_noise < 0:
        raise UsageError(
            f"--weight-noise must be a number >= 0 (the noise's standard deviation in units of "
            f"each weight tensor's, e.g. 0.01; 0: none), got {weight_noise!r}"
        )
    return float(weight_noise)


def _start(
    parent: _Parent, config: ExperimentConfig, reinit_last: bool, weight_noise: float
) -> tuple[Experiment, dict[str, Any]]:
    """Build the run of ``config``, load the parent's parameters into it, re-initialise and
    perturb them; the experiment and the record of :data:`PARENT_FILE`."""
    experiment = build_experiment(config)
    warm_up(experiment)  # the guide's parameters at a fresh run's initial values
    reinit = last_linear_sites(experiment) if reinit_last else ()
    keep = {name for site in reinit for name, _ in _guide_names(experiment, site)}
    _load_parameters(parent, keep)
    device = experiment.device
    buffers = {name: value.to(device) for name, value in parent.buffers.items()}
    experiment.model.load_state_dict(buffers, strict=False)
    noised = (
        _add_weight_noise(experiment, weight_noise, config.seed, reinit) if weight_noise else []
    )
    record = {
        "run_dir": str(parent.run_dir.resolve()),
        "checkpoint": "checkpoint.pt",
        "checkpoint_sha256": parent.sha256,
        "epoch": parent.epoch,
        "step": parent.step,
        "config_fingerprint": parent.config.fingerprint(),
        "reinit_last": bool(reinit_last),
        "reinit_sites": list(reinit),
        "weight_noise": weight_noise,
        "noise_sites": noised,
        "noise_seed": config.seed,
    }
    return experiment, record


def start_from(
    run_dir: str | os.PathLike,
    *,
    reinit_last: bool = False,
    weight_noise: float = 0.0,
    **overrides: Any,
) -> tuple[Experiment, dict[str, Any]]:
    """The experiment of a run fine-tuned from the finished run in ``run_dir``, before training,
    and the record :func:`finetune` writes to :data:`PARENT_FILE`. Nothing is written.

    Its configuration is :func:`finetune_config` of the parent's and ``overrides`` (``device``
    not given: CUDA when available). It is built like a new run (:func:`build_experiment`, the
    guide set up with :func:`warm_up`: a fresh optimiser, schedule and loss state), then the
    parent's final parameters are copied in bit for bit, with its BatchNorm buffers; then

    * ``reinit_last``: the guide's parameters of :func:`last_linear_sites` keep the fresh run's
      initial values, the values a new run of this configuration starts from: the network's
      initialisation drawn with the run's seed (AutoDelta's points, each ensemble member's own
      draw, AutoNormal's means) and AutoNormal's scales at ``init_scale``. With the parent's seed
      these are the values the parent itself started from.
    * ``weight_noise`` (> 0): each weight tensor ``w`` (every random site ``*.weight``: the
      linear and convolution weights; not biases, not normalisation layers' parameters, not a
      regression's ``sigma``) gets ``weight_noise * w.std(correction=0) * z``, ``z`` standard
      normal from ``torch.Generator().manual_seed(seed)`` drawn in the order of
      ``model.random_sites`` (ensemble members in order within a site). It perturbs the point
      values, each member's, or AutoNormal's means; the scales stay. A layer re-initialised by
      ``reinit_last`` gets no noise.

    :raises UsageError: for a bad setting or ``weight_noise``, an override of the model, a
        missing run directory, or ``reinit_last`` on a network without a last linear layer.
    :raises RunError: if the run is not finished, is in use, or its checkpoint is damaged or
        does not match its ``config.json``.

    Usage::

        import pyro
        from pyro_otmdr.experiments import start_from
        from pyro_otmdr.experiments.cli import main

        main(["train", "--guide", "delta", "--method", "svi", "--epochs", "1", "--hidden", "8",
              "--num-samples", "2", "--device", "cpu", "--quiet", "--out", "runs/map"])
        experiment, record = start_from("runs/map", reinit_last=True, weight_noise=0.01,
                                        data_robust="at", device="cpu")
        assert record["reinit_sites"] == ["net.2.weight", "net.2.bias"]
        assert record["noise_sites"] == ["net.0.weight"]   # the re-initialised layer: no noise
    """
    weight_noise = _check_weight_noise(weight_noise)
    run_dir = _parent_dir(Path(run_dir))
    parent_config = _read_config(run_dir / "config.json")
    config = _config(parent_config, overrides)
    return _start(_read_parent(run_dir, parent_config), config, reinit_last, weight_noise)


def _config(parent: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """:func:`finetune_config`, with the device the command line would choose if not given."""
    overrides = dict(overrides)
    overrides["device"] = resolve_device(overrides.get("device"))
    return finetune_config(parent, **overrides)


# -- the run directory ----------------------------------------------------------------------------


def _check_out(run_dir: Path, out: Path, overwrite: bool) -> None:
    """The errors of ``--out`` (before anything is read or written)."""
    if not str(out).strip():
        raise UsageError("--out is empty: name the directory of the new run")
    here, parent = out.resolve(), run_dir.resolve()
    if here == Path(here.anchor):
        raise UsageError(f"refusing to write into the root directory {out}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if here == parent or parent in here.parents:
        where = "is" if here == parent else "is inside"
        raise UsageError(
            f"--out {out} {where} the parent run directory {run_dir}: a fine-tuned run goes into "
            "a new directory and never into its parent's (--overwrite does not change that); "
            "choose another --out"
        )
    found = holds_run(out)
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise UsageError(
            f"--out {out} holds a run already ({names}): choose another --out, replace it with "
            f"--overwrite, or, if it is a fine-tuning that was interrupted, continue it with "
            f"'otmdr train --resume {out}'"
        )


def read_parent_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The :data:`PARENT_FILE` of a fine-tuned run (``None`` for a run trained from scratch).

    Keys: ``run_dir`` (the parent's directory, absolute), ``checkpoint`` and
    ``checkpoint_sha256`` (the SHA-256 of the parent's ``checkpoint.pt`` file as it was read),
    ``epoch`` and ``step`` of that checkpoint, ``config_fingerprint`` (the parent's
    :meth:`~ExperimentConfig.fingerprint`), ``reinit_last`` and ``reinit_sites``,
    ``weight_noise``, ``noise_sites`` and ``noise_seed``.

    :raises RunError: if the file is not a readable record.

    Usage::

        import json
        from pathlib import Path
        from pyro_otmdr.experiments import read_parent_record

        Path("runs/scratch").mkdir(parents=True)
        assert read_parent_record("runs/scratch") is None      # trained from scratch
        record = {"run_dir": "/runs/at", "checkpoint_sha256": "0" * 64, "reinit_last": True,
                  "weight_noise": 0.0}
        Path("runs/scratch/parent.json").write_text(json.dumps(record))
        assert read_parent_record("runs/scratch")["reinit_last"] is True
    """
    path = Path(run_dir) / PARENT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(record, dict) or any(key not in record for key in _RECORD_KEYS):
        raise RunError(f"{path} is not the record of a parent run (it needs {list(_RECORD_KEYS)})")
    return record


def finetune(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    reinit_last: bool = False,
    weight_noise: float = 0.0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool | None = False,
    skip_nonfinite: bool = False,
    on_start: Callable[[Experiment, dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> dict[str, float]:
    """Fine-tune the finished run in ``run_dir`` into the new run directory ``out``; return the
    new run's test metrics (what :func:`~.runs.run_experiment` returns).

    The run starts as :func:`start_from` says (``reinit_last``, ``weight_noise`` and the
    ``overrides`` of the parent's settings) and is trained and written like ``otmdr train``'s:
    ``config.json``, a ``checkpoint.pt`` after every epoch (epochs counted from 0),
    ``history.json``, ``metrics.json``, ``tree.nc`` and the calibration plots, and
    :data:`PARENT_FILE`. ``out`` is locked meanwhile; the parent's directory is only read (its
    checkpoint once) and never written. ``overwrite`` replaces a run already in ``out``; ``log``
    gets the per-epoch lines, ``progress`` is the progress bar (``None``: on a terminal),
    ``skip_nonfinite`` skips a batch whose loss is not finite, and ``on_start(experiment,
    record)`` is called once the run directory is set up, before the first step. Ctrl-C leaves
    the last epoch's checkpoint: ``otmdr train --resume OUT`` continues from it.

    Every error (see :func:`start_from`; and ``out`` that is ``run_dir``, inside it, or holds a
    run without ``overwrite``) is raised before anything is written.

    Usage::

        from pyro_otmdr.experiments import finetune
        from pyro_otmdr.experiments.cli import main

        main(["train", "--guide", "delta", "--method", "svi", "--epochs", "1", "--hidden", "8",
              "--device", "cpu", "--quiet", "--out", "runs/map"])
        metrics = finetune("runs/map", "runs/map-sam", method="sam", weight_noise=0.01,
                           reinit_last=True, epochs=1, device="cpu")
        assert 0 <= metrics["accuracy"] <= 1
    """
    weight_noise = _check_weight_noise(weight_noise)
    run_dir, out = _parent_dir(Path(run_dir)), Path(out)
    _check_out(run_dir, out, overwrite)
    parent_config = _read_config(run_dir / "config.json")
    config = _config(parent_config, overrides)
    experiment, record = _start(
        _read_parent(run_dir, parent_config), config, reinit_last, weight_noise
    )
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "finetune"):
        _check_out(run_dir, out, overwrite)  # again, under the lock
        clear_run(out)
        write_json(out / "config.json", experiment.config.to_dict())
        write_json(out / PARENT_FILE, record)
        if on_start is not None:
            on_start(experiment, record)
        return _train(out, experiment, log, progress, skip_nonfinite)


def _train(
    out: Path,
    experiment: Experiment,
    log: Callable[[str], None] | None,
    progress: bool | None,
    skip_nonfinite: bool,
) -> dict[str, float]:
    """Train from epoch 0, checkpoint every epoch, evaluate on test; ``otmdr train``'s files."""
    result = train_into(out, experiment, log=log, progress=progress, skip_nonfinite=skip_nonfinite)
    return result.metrics
