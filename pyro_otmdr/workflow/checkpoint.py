"""Checkpoints that continue a run exactly: parameters, optimiser, OT-MDR generators, RNG, counters.

A checkpoint holds the Pyro param store (unconstrained tensors and their constraints), an optional
module's ``state_dict`` (the ``ELBOModule`` / ``nn.Module`` route), the optimiser's state (a
``PyroOptim``'s ``get_state()`` or a torch optimiser's ``state_dict()``, including
:class:`~pyro_otmdr.model_space.optim.OTMDROptimizer`'s generators), the loss's state
(``OTMDR.state_dict()``), torch's, Python's and NumPy's global RNG states (CUDA's too when there
is one), the epoch, the step and any ``extra`` plain data.

The file is a small envelope (format tag, version, SHA-256) around the serialised contents, so
silent corruption of tensor data is caught too. Writes are atomic: the file is written to a
temporary file in the same directory, flushed and fsynced, then moved over the target with
``os.replace``; an interrupted save leaves the previous checkpoint as it was. Everything is
stored as tensors and plain containers, so loading uses ``torch.load(..., weights_only=True)``:
no code runs while loading. A truncated, corrupted or foreign file raises
:class:`CheckpointError`.

Resuming on the CPU reproduces the uninterrupted run bit for bit, provided the model and guide are
built as before and lazily built guides are set up (called once) *before* loading: setting up an
autoguide draws from the global RNG, and loading restores the RNG last.

Usage::

    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro_otmdr import OTMDR, load_checkpoint, save_checkpoint
    from pyro_otmdr.bayes import bayesian

    def build():                                    # the same model, guide, optimiser and loss
        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        optim, loss = pyro.optim.Adam({"lr": 1e-2}), OTMDR(Trace_ELBO(), rho=0.05)
        return model, AutoNormal(model), optim, loss

    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    model, guide, optim, loss = build()
    SVI(model, guide, optim, loss).step(x, y)
    save_checkpoint("run/last.pt", optim=optim, loss=loss, epoch=0, step=1)

    pyro.clear_param_store()                        # later, in a new process
    model, guide, optim, loss = build()
    guide(x[:2], y[:2])                             # set the autoguide up, then load
    ckpt = load_checkpoint("run/last.pt", optim=optim, loss=loss)
    start_epoch, step = ckpt.epoch + 1, ckpt.step
    assert (start_epoch, step) == (1, 1)
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions.constraints as constraints
import torch
from torch import nn

from .outputs import write_bytes

__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "pyro_otmdr.checkpoint"
VERSION = 1

#: What every checkpoint's contents hold (``None`` where nothing was saved).
_CONTENTS = {"epoch", "step", "param_store", "module", "optim", "loss", "scheduler", "rng", "extra"}

_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: truncated, corrupted, foreign or unserialisable."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read, after restoring it into the objects it was given.

    :ivar epoch: the epoch saved.
    :ivar step: the step saved.
    :ivar extra: the ``extra`` plain data saved.
    :ivar path: where it was read from.
    :ivar contents: the raw contents (param store, module, optimiser, loss, RNG states).
    """

    epoch: int
    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    contents: dict[str, Any] = field(default_factory=dict, repr=False)


# -- save ----------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike,
    *,
    optim: Any = None,
    loss: Any = None,
    module: nn.Module | None = None,
    scheduler: Any = None,
    epoch: int = 0,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    param_store: bool = True,
) -> Path:
    """Write everything needed to continue the run to ``path``, atomically.

    :param optim: a ``pyro.optim.PyroOptim`` (``get_state``) or a torch optimiser
        (``state_dict``), e.g. an :class:`~pyro_otmdr.model_space.optim.OTMDROptimizer`.
    :param loss: an :class:`~pyro_otmdr.OTMDR` / :class:`~pyro_otmdr.SAM` (its generators), or
        ``svi.loss`` (the bound method ``SVI`` keeps); a loss without ``state_dict`` is skipped.
    :param module: a module whose ``state_dict`` to save (an ``ELBOModule`` keeps its parameters
        there with ``module_local_params=True``).
    :param scheduler: a torch LR scheduler.
    :param epoch: the epoch just finished (or in progress).
    :param step: the number of steps taken.
    :param extra: more plain data (numbers, strings, tensors, lists, dicts).
    :param param_store: whether to save Pyro's global param store.
    :returns: the path written.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr import OTMDR, save_checkpoint
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 1e-2}),
                  loss=OTMDR(Trace_ELBO(), rho=0.05))
        svi.step(torch.randn(8, 4), torch.randint(3, (8,)))
        path = save_checkpoint("run/last.pt", optim=svi.optim, loss=svi.loss, epoch=3, step=1200)
        assert path.is_file()
    """
    _check_count("epoch", epoch)
    _check_count("step", step)
    contents = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "step": int(step),
        "param_store": _param_store_state() if param_store else None,
        "module": module.state_dict() if module is not None else None,
        "optim": _optim_state(optim),
        "loss": _loss_state(loss),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
        "extra": dict(extra or {}),
    }
    _check_plain(contents, "checkpoint")
    return _atomic_save(contents, Path(path))


def _envelope(contents: dict[str, Any]) -> dict[str, Any]:
    """The contents serialised, with their SHA-256: silent corruption of tensor data is caught."""
    buffer = io.BytesIO()
    torch.save(contents, buffer)
    payload = buffer.getvalue()
    return {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        # from NumPy: the tensor then keeps its memory alive (torch.frombuffer's does not, and
        # freeing the two in the wrong order after an error crashed the interpreter)
        "payload": torch.from_numpy(np.frombuffer(bytearray(payload), dtype=np.uint8)),
    }


def _atomic_save(contents: dict[str, Any], path: Path) -> Path:
    """The envelope serialised in memory, then written atomically: a full disk or a read-only
    directory is an :class:`~pyro_otmdr.workflow.outputs.OutputError` and the previous
    checkpoint is kept."""
    buffer = io.BytesIO()
    torch.save(_envelope(contents), buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, buffer.getvalue())


def _param_store_state() -> dict[str, Any]:
    store = pyro.get_param_store()
    kinds = store.get_state()["constraints"]
    params = {name: leaf.detach().clone() for name, leaf in store.named_parameters()}
    kinds = {name: _encode_constraint(kinds[name], name) for name in params}
    return {"params": params, "constraints": kinds}


def _optim_state(optim: Any) -> dict[str, Any] | None:
    if optim is None:
        return None
    if hasattr(optim, "get_state") and hasattr(optim, "set_state"):  # PyroOptim
        state = dict(getattr(optim, "_state_waiting_to_be_consumed", {}))
        state.update(optim.get_state())  # not yet consumed after a load, then the live ones
        return {"kind": "pyro", "state": state}
    if hasattr(optim, "state_dict") and hasattr(optim, "load_state_dict"):
        return {"kind": "torch", "state": optim.state_dict()}
    raise TypeError(
        f"optim must be a pyro.optim.PyroOptim or a torch optimiser, got {type(optim).__name__}"
    )


def _loss_object(loss: Any) -> Any:
    """The loss object itself: ``SVI`` keeps only the bound method ``svi.loss`` of an ELBO."""
    return getattr(loss, "__self__", loss)


def _loss_state(loss: Any) -> dict[str, Any] | None:
    loss = _loss_object(loss)
    return loss.state_dict() if hasattr(loss, "state_dict") else None


def _rng_state() -> dict[str, Any]:
    version, keys, gauss = random.getstate()
    algorithm, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": [version, list(keys), gauss],
        "numpy": [algorithm, torch.from_numpy(np_keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _encode_constraint(constraint: Any, where: str) -> dict[str, Any]:
    for name in dir(constraints):
        if getattr(constraints, name) is constraint:
            return {"name": name}
    cls = type(constraint)  # a parametrised constraint, by its public name (independent, ...)
    alias = next((name for name in dir(constraints) if getattr(constraints, name) is cls), None)
    if alias is not None:
        args = {
            k: _encode_constraint(v, where) if isinstance(v, constraints.Constraint) else v
            for k, v in vars(constraint).items()
        }
        return {"class": alias, "args": args}
    raise CheckpointError(
        f"cannot save the constraint {constraint!r} of parameter {where!r}: only the constraints "
        "of pyro.distributions.constraints can be stored"
    )


def _check_plain(value: Any, where: str) -> None:
    """Refuse, at save time, what ``torch.load(weights_only=True)`` would refuse to load."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise CheckpointError(f"{where}: key {k!r} is not a string or an integer")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(
            f"{where} is a {type(value).__name__}: a checkpoint stores tensors, numbers, strings "
            "and lists/dicts of them (convert it, e.g. to a tensor or a list)"
        )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


# -- load ----------------------------------------------------------------------------------------


def load_checkpoint(
    path: str | os.PathLike,
    *,
    optim: Any = None,
    loss: Any = None,
    module: nn.Module | None = None,
    scheduler: Any = None,
    map_location: str | torch.device | None = None,
    param_store: bool = True,
    restore_rng: bool = True,
) -> Checkpoint:
    """Read a checkpoint and restore it into the objects given.

    The param store's entries are written into existing parameters in place (or created), the
    module, optimiser, loss and scheduler states are loaded, and the global RNG states are
    restored last. Parameters and optimiser states go to ``map_location`` (default: where they
    were); RNG and generator states stay on the CPU, where torch keeps them.

    :raises FileNotFoundError: if ``path`` does not exist.
    :raises CheckpointError: if the file is truncated, corrupted or not a checkpoint of this
        package, or lacks a part that was asked for.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr import OTMDR, load_checkpoint, save_checkpoint
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=8)
        svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 1e-2}),
                  loss=OTMDR(Trace_ELBO(), rho=0.05))
        svi.step(torch.randn(8, 4), torch.randint(3, (8,)))
        save_checkpoint("run/last.pt", optim=svi.optim, loss=svi.loss, epoch=3, step=1200)
        ckpt = load_checkpoint("run/last.pt", optim=svi.optim, loss=svi.loss)
        print(ckpt.epoch, ckpt.step)   # 3 1200
    """
    path = Path(path)
    contents = _read(path)
    device = torch.device(map_location) if map_location is not None else None
    if param_store and contents["param_store"] is not None:
        _restore_param_store(contents["param_store"], device)
    if module is not None:
        module.load_state_dict(_to(_need(contents, "module", path), device))
    if optim is not None:
        _restore_optim(optim, _need(contents, "optim", path), device)
    loss = _loss_object(loss)
    restorable = loss is not None and hasattr(loss, "load_state_dict")
    if restorable and (contents["loss"] is not None or _loss_state(loss)):  # empty: nothing to do
        loss.load_state_dict(_need(contents, "loss", path))
    if scheduler is not None:
        scheduler.load_state_dict(_need(contents, "scheduler", path))
    if restore_rng:
        _restore_rng(contents["rng"])
    return Checkpoint(contents["epoch"], contents["step"], contents["extra"], path, contents)


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return decode_checkpoint(path.read_bytes(), path)


def decode_checkpoint(data: bytes, path: str | os.PathLike) -> dict[str, Any]:
    """The contents of a checkpoint file's bytes ``data`` (read from ``path``, named in errors),
    checked as :func:`load_checkpoint` checks them; nothing is restored.

    :raises CheckpointError: if the bytes are not an intact checkpoint of this package.
    """
    path = Path(path)
    envelope = _load(io.BytesIO(data), path)
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a pyro_otmdr checkpoint (no format tag {FORMAT!r})"
        )
    if envelope.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of format version {envelope.get('version')!r}; this "
            f"version of pyro_otmdr reads version {VERSION}"
        )
    payload, sha256 = envelope.get("payload"), envelope.get("sha256")
    if not isinstance(payload, torch.Tensor) or not isinstance(sha256, str):
        raise CheckpointError(f"{path} is a damaged checkpoint: its envelope holds no payload")
    payload = payload.numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise CheckpointError(f"{path} is corrupted: its contents do not match their checksum")
    contents = _load(io.BytesIO(payload), path)
    missing = sorted(_CONTENTS - set(contents)) if isinstance(contents, dict) else ["all"]
    if missing:
        raise CheckpointError(f"{path} is a damaged checkpoint: it lacks {', '.join(missing)}")
    return contents


def _load(source: Path | io.BytesIO, path: Path) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to parse: truncated, corrupted, foreign
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupted, or not written by "
            f"pyro_otmdr.save_checkpoint): {type(err).__name__}: {_first_line(err)}"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _need(contents: dict[str, Any], key: str, path: Path) -> Any:
    if contents.get(key) is None:
        raise CheckpointError(f"{path} holds no {key} state: it was saved without {key}=")
    return contents[key]


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value


@torch.no_grad()
def _restore_param_store(state: dict[str, Any], device: torch.device | None) -> None:
    store = pyro.get_param_store()
    for name, unconstrained in state["params"].items():
        target = device or unconstrained.device
        if name in store:
            leaf = store[name].unconstrained()
            if leaf.shape != unconstrained.shape:
                raise CheckpointError(
                    f"parameter {name!r} has shape {tuple(leaf.shape)} here but "
                    f"{tuple(unconstrained.shape)} in the checkpoint: build the same model"
                )
        else:
            constraint = _decode_constraint(state["constraints"][name])
            value = torch.distributions.transform_to(constraint)(unconstrained.to(target))
            leaf = pyro.param(name, value, constraint=constraint).unconstrained()
        leaf.copy_(unconstrained.to(leaf.device))  # bit-exact, whatever the transform


def _decode_constraint(encoded: dict[str, Any]) -> Any:
    if "name" in encoded:
        return getattr(constraints, encoded["name"])
    args = {
        k: _decode_constraint(v) if isinstance(v, dict) else v for k, v in encoded["args"].items()
    }
    return getattr(constraints, encoded["class"])(**args)


def _restore_optim(optim: Any, saved: dict[str, Any], device: torch.device | None) -> None:
    kind = saved["kind"]
    if kind == "pyro":
        if not hasattr(optim, "set_state"):
            raise CheckpointError("the checkpoint holds a PyroOptim state: pass a PyroOptim")
        optim.set_state(_to(saved["state"], device))
    else:
        if hasattr(optim, "set_state") and not hasattr(optim, "param_groups"):
            raise CheckpointError("the checkpoint holds a torch optimiser state: pass one")
        optim.load_state_dict(saved["state"])  # torch moves states to the parameters' device


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, keys, gauss = state["random"]
    random.setstate((version, tuple(keys), gauss))
    algorithm, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((algorithm, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
