"""AutoAttack (Croce and Hein, ICML 2020) on any predictor, through the optional ``pyautoattack``.

AutoAttack is a fixed, parameter-free ensemble of attacks run as a cascade: each attack sees only
the examples that the ones before it left correctly classified, so the robust accuracy is the
share that no attack broke. ``pip install "pyro-otmdr[autoattack]"`` installs the package that
runs it (``pyautoattack``, MIT); without it this module still imports and :func:`autoattack`
raises a :class:`MissingExtraError` that names the install command. Two versions:

* ``"standard"``: APGD-CE, APGD-T (targeted DLR on the ``min(9, C - 1)`` runner-up classes),
  FAB-T and Square (5000 queries), for a deterministic predictor (a network, a point estimate,
  an ensemble, a :func:`~pyro_otmdr.attacks.posterior_predictive` with frozen draws);
* ``"rand"``: APGD-CE and APGD-DLR, each gradient an average over 20 forwards (expectation over
  transformation), for a random predictor such as ``posterior_predictive(model, guide,
  resample=True)``, which draws the posterior afresh at every forward.

This module gives pyautoattack the conventions of the package's other attacks: the same argument
checks; the predictor in eval mode (modes restored after); gradients with respect to the input
only (FAB's ``backward`` would otherwise leave a ``.grad`` on the parameters); the caller's torch
RNG left as it was (pyautoattack reseeds the global generator with ``seed``); its logger silent
unless ``verbose``; inputs of any shape laid out as the ``(N, C, H, W)`` images that Square needs;
and any ``box`` mapped onto the unit box pyautoattack clamps to. pyautoattack works in float32,
so every ``x_adv`` is put back into its ``eps``-ball and the box in ``x``'s dtype and evaluated
once more: an example counts as robust only if it is correct clean, no attack broke it, and it
is correct at ``x_adv``. A pointwise attack at ``eps`` is a feasible ``W_2`` attack at
``delta = eps``, so the true ``W_2`` robust accuracy at that budget is no higher than
AutoAttack's (see the docs, Data-space robustness: AutoAttack).

Usage::

    import torch
    from pyro_otmdr.attacks import autoattack, pgd

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(32, 8)
    y = net(x).argmax(-1)                                   # every example correct clean
    # APGD-CE alone, a quick check: without attacks= the whole standard ensemble runs
    result = autoattack(net, x, y, eps=0.05, norm="linf", attacks=("apgd-ce",))
    assert result.clean_accuracy == 1.0 and (result.x_adv - x).abs().max() <= 0.05 + 1e-6
    assert result.robust_accuracy <= pgd(net, x, y, eps=0.05, steps=20).robust_accuracy + 1 / 32
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence

import torch

from ..bayes.replay import seeded_rng
from .common import (
    _logits,
    attack_mode,
    check_attack_args,
    check_choice,
    check_positive,
    loss_pass,
    predictor_device,
    w_distance,
)
from .losses import ce
from .pgd import project_to_ball
from .result import AttackResult

__all__ = ["EXTRA_HINT", "VERSIONS", "MissingExtraError", "autoattack", "import_pyautoattack"]

#: The attacks of each version, in the order the cascade runs them.
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),
}

#: How to install the optional dependency, as every missing-extra error says it.
EXTRA_HINT = 'pip install "pyro-otmdr[autoattack]"'

#: The fewest classes each attack's loss needs (the DLR losses read the 3rd and 4th logits).
_MIN_CLASSES = {"apgd-ce": 2, "apgd-dlr": 3, "apgd-t": 4, "fab-t": 2, "square": 2}
#: pyautoattack's names of the norms, and its logger.
_NORMS = {"linf": "Linf", "l2": "L2"}
_LOGGER = "auto-attack"
#: The l2 Square attack tiles the image with windows of side ``H // 5``: it needs H, W >= 5.
_SQUARE_L2_SIDE = 5


class MissingExtraError(ImportError, RuntimeError):
    """The optional extra ``autoattack`` (the ``pyautoattack`` package) is not installed.

    An ``ImportError``; also a ``RuntimeError``, so the ``otmdr`` command reports it in one line.
    """


def import_pyautoattack() -> type:
    """pyautoattack's ``AutoAttack`` class.

    :raises MissingExtraError: (an ``ImportError``) when the extra is not installed.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        raise MissingExtraError(
            "AutoAttack needs the optional extra autoattack (the pyautoattack package): "
            f"{EXTRA_HINT}"
        ) from err
    return AutoAttack


class _Layout:
    """Inputs ``(N, *shape)`` as the ``(N, C, H, W)`` images pyautoattack's Square attack needs.

    An image ``(C, H, W)`` is kept as it is (for l2, if ``H, W >= 5``: Square's l2 windows need
    it). Any other input is flattened into the top-left ``b x b`` block of a ``(1, S, S)`` image,
    ``b = ceil(sqrt(features))``, row by row, the rest zeros the predictor never sees. ``S`` is
    ``b + 1`` (at least 5 for l2): Square's windows of side ``s`` start at offsets
    ``0 .. S - s - 1``, so after its first perturbation it never changes an image's last row and
    column, and there the layout puts only padding.
    """

    def __init__(self, shape: Sequence[int], norm: str) -> None:
        self.shape, self.features = tuple(shape), math.prod(shape)
        if len(self.shape) == 3 and (norm == "linf" or min(self.shape[1:]) >= _SQUARE_L2_SIDE):
            self.image, self.block, self.pad = self.shape, 0, 0
            return
        self.block = math.isqrt(self.features - 1) + 1
        side = max(self.block + 1, _SQUARE_L2_SIDE if norm == "l2" else 2)
        self.image, self.pad = (1, side, side), side * side - self.features

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        if self.image == self.shape:
            return x
        n, b = x.shape[0], self.block
        block = x.new_zeros(n, b * b)
        block[:, : self.features] = x.reshape(n, self.features)
        images = x.new_zeros(n, *self.image)
        images[:, 0, :b, :b] = block.reshape(n, b, b)
        return images

    def to_inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.image == self.shape:
            return images
        n, b = images.shape[0], self.block
        block = images[:, 0, :b, :b].reshape(n, b * b)
        return block[:, : self.features].reshape(n, *self.shape)


class _InputGradOnly(torch.autograd.Function):
    """``forward(u)`` whose backward reaches ``u`` only: no parameter accumulates a ``.grad``."""

    @staticmethod
    def forward(ctx, forward: Callable, u: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = u.detach().requires_grad_()
            out = forward(leaf)
        ctx.leaf, ctx.out = leaf, out
        return out.detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        du = None
        if ctx.out.requires_grad:  # FAB backpropagates several times through one forward
            (du,) = torch.autograd.grad(
                ctx.out, ctx.leaf, grad, retain_graph=True, allow_unused=True
            )
        return None, torch.zeros_like(ctx.leaf) if du is None else du


class _UnitBoxModel(torch.nn.Module):
    """What pyautoattack attacks: float32 unit-box images -> the predictor's logits in float32."""

    def __init__(
        self, predict: Callable, layout: _Layout, dtype: torch.dtype, low: float, scale: float
    ) -> None:
        super().__init__()
        self._predict, self._layout, self._dtype = (predict,), layout, dtype
        self._low, self._scale = low, scale

    def inputs(self, u: torch.Tensor) -> torch.Tensor:
        """Unit-box images -> the predictor's inputs, in its box and dtype."""
        x = self._layout.to_inputs(u).to(self._dtype)
        if (self._low, self._scale) == (0.0, 1.0):
            return x
        return self._low + self._scale * x

    def _logits(self, u: torch.Tensor) -> torch.Tensor:
        return _logits(self._predict[0], self.inputs(u)).float()  # FAB mixes them with float32

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and u.requires_grad:
            return _InputGradOnly.apply(self._logits, u)
        with torch.no_grad():
            return self._logits(u)


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """pyautoattack's logger silenced, or (``verbose``) at DEBUG, printing to stderr."""
    logger = logging.getLogger(_LOGGER)
    saved, handler = (logger.level, logger.disabled), None
    if verbose:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        if not logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("autoattack: %(message)s"))
            logger.addHandler(handler)
    else:
        logger.disabled = True
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.disabled = saved[1]
        if handler is not None:
            logger.removeHandler(handler)


@contextlib.contextmanager
def _trace_kept() -> Iterator[None]:
    """pyautoattack's check for dynamic defences ends with ``sys.settrace(None)``, which would
    switch off a coverage tool or a debugger: their tracer is put back."""
    tracer = sys.gettrace()
    try:
        yield
    finally:
        sys.settrace(tracer)


def _num_classes(predict: Callable, x: torch.Tensor, names: Sequence[str]) -> int:
    """The predictor's number of classes, checked against what every attack needs."""
    with torch.no_grad():
        num_classes = _logits(predict, x).shape[-1]
    for name in names:
        if num_classes < _MIN_CLASSES[name]:
            raise ValueError(
                f"{name} needs at least {_MIN_CLASSES[name]} classes, got {num_classes}; "
                "leave it out with attacks=(...)"
            )
    return num_classes


def _attack_names(version: str, attacks: Sequence[str] | None) -> tuple[str, ...]:
    check_choice("version", version, tuple(VERSIONS))
    every = VERSIONS[version]
    if attacks is None:
        return every
    if isinstance(attacks, str) or not isinstance(attacks, Sequence) or not attacks:
        names = ", ".join(repr(a) for a in every)
        raise ValueError(
            f"attacks must be a non-empty sequence of names from {names}, got {attacks!r}"
        )
    for name in attacks:
        check_choice("attack", name, every)
    return tuple(name for name in every if name in attacks)


def autoattack(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    eot_iter: int | None = None,
    box: tuple[float, float] = (0.0, 1.0),
    verbose: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> AttackResult:
    """AutoAttack in every example's ``eps``-ball (see the module docstring); needs the extra.

    The cost is that of hundreds of PGD steps: APGD runs 100 iterations per restart and per
    target class, FAB-T 100 per target class, Square up to 5000 forwards on the examples still
    standing, and ``"rand"`` averages every gradient over 20 forwards. ``x`` is not modified.

    :param predict: ``x -> logits`` (or log-probabilities) ``(B, C)``: an ``nn.Module``, a
        :func:`~pyro_otmdr.attacks.posterior_predictive`, any callable; for ``"rand"``, one that
        draws afresh at every call (``posterior_predictive(..., resample=True)``).
    :param x: inputs ``(N, ...)``, finite and inside ``box`` (checked once, at entry).
    :param y: integer labels ``(N,)``.
    :param eps: the radius of every example's ball, in the units of the box.
    :param norm: ``"linf"`` or ``"l2"``.
    :param version: ``"standard"`` or ``"rand"`` (see :data:`VERSIONS`).
    :param attacks: a subset of the version's attacks to run, with the version's settings and
        in its order (default: all of them), e.g. ``("apgd-ce", "apgd-t")`` for a quick check.
    :param batch_size: examples per pass (memory only).
    :param seed: seeds pyautoattack's random starts and a resampling predictor's draws: the
        same seed gives the same result. The caller's torch RNG is left as it was.
    :param eot_iter: the forwards each APGD gradient averages: default the version's (1 for
        ``"standard"``, 20 for ``"rand"``); fewer makes a cheaper, noisier attack on a random
        predictor.
    :param box: the inputs' box; pyautoattack's ``[0, 1]`` is mapped onto it.
    :param verbose: let pyautoattack log its progress and its checks to stderr.
    :param callback: ``callback(t, x_adv)`` after attack ``t = 1..len(attacks)`` (do not
        modify ``x_adv``).
    :returns: an :class:`AttackResult` with ``attack="autoattack"``, ``p = inf``, one entry of
        ``accuracies`` and ``losses`` (the mean CE at ``x_adv``) per attack, ``max_loss`` the
        mean over examples of the largest CE of any input evaluated, ``x_adv`` per example the
        input that broke it or else ``x`` itself, and ``extra`` holding the version, the
        attacks, the seed, the target classes and the image layout.
    :raises ValueError: for ``eps <= 0``, an unknown ``norm``/``version``/attack, too few
        classes for an attack (APGD-T needs 4, APGD-DLR 3), ``x`` outside ``box`` or not finite,
        or ``x`` and ``y`` of different lengths.
    :raises MissingExtraError: (an ``ImportError``) without the extra installed.

    Usage::

        import torch
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.attacks import autoattack, posterior_predictive
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(8, 4), num_data=16)
        guide = AutoNormal(model)
        x, y = torch.rand(16, 8), torch.randint(4, (16,))
        guide(x, y)                                          # set the autoguide up (or train it)
        predict = posterior_predictive(model, guide, num_samples=1, resample=True)  # fresh draws
        # APGD-CE, 2 forwards per gradient, a quick check: by default APGD-CE and APGD-DLR, 20
        result = autoattack(predict, x, y, eps=0.05, version="rand", attacks=("apgd-ce",),
                            eot_iter=2)
        assert result.robust_accuracy <= result.clean_accuracy
        assert result.distance <= 0.05 + 1e-6 and result.extra["version"] == "rand"
    """
    _, s = check_attack_args(x, y, budget=("eps", eps), p=math.inf, cost=norm, loss="ce", box=box)
    names = _attack_names(version, attacks)
    check_positive("batch_size", batch_size, int)
    if eot_iter is not None:
        check_positive("eot_iter", eot_iter, int)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    AutoAttack = import_pyautoattack()
    device = predictor_device(predict, x)
    x0, labels = x.detach().to(device), y.detach().to(device).long()
    low, high = float(box[0]), float(box[1])
    scale, layout = high - low, _Layout(x0.shape[1:], norm)
    run = functools.partial(loss_pass, predict, y=labels, loss_fn=ce, batch_size=batch_size)
    with attack_mode(predict), seeded_rng(seed, device), _logging(verbose):
        num_classes = _num_classes(predict, x0[:1], names)
        _, correct, losses = run(x0, need_grad=False)
        clean = (float(correct.double().mean()), float(losses.mean()))
        model = _UnitBoxModel(predict, layout, x.dtype, low, scale)
        adversary = AutoAttack(
            model, device=device, eps=eps / scale, norm=_NORMS[norm], seed=seed, version=version
        )
        adversary.verbose = verbose
        if eot_iter is not None:
            adversary.apgd.eot_iter = adversary.apgd_targeted.eot_iter = eot_iter
        targets = min(9, num_classes - 1)
        adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = targets
        unit = x0 if (low, scale) == (0.0, 1.0) else (x0 - low) / scale
        images = layout.to_images(unit).float()  # pyautoattack's attacks work in float32
        robust, worst, x_adv = correct.clone(), losses.clone(), x0.clone()
        accuracies, means = [], []
        for t, name in enumerate(names, start=1):
            index = robust.nonzero().squeeze(1)
            if index.numel():
                adversary.attacks_to_run = [name]
                with _trace_kept():
                    adv, predicted = adversary.run_standard_evaluation(
                        images[index], labels[index], batch_size=batch_size
                    )
                broken = predicted.to(device) != labels[index]
                moved, found = index[broken], model.inputs(adv[broken].to(device))
                moves = project_to_ball(found - x0[moved], eps, s)  # float32 -> x's own dtype
                x_adv[moved] = (x0[moved] + moves).clamp(low, high)
                robust[moved] = False
            _, correct, losses = run(x_adv, need_grad=False)  # x_adv checked once more
            robust &= correct
            worst = torch.maximum(worst, losses)
            accuracies.append(float(robust.double().mean()))
            means.append(float(losses.mean()))
            if callback is not None:
                callback(t, x_adv)
    return AttackResult(
        robust_accuracy=accuracies[-1],
        accuracies=accuracies,
        losses=means,
        max_loss=float(worst.mean()),
        x_adv=x_adv.to(x.device),
        distance=w_distance(x0, x_adv, p=math.inf, cost=norm),
        clean_accuracy=clean[0],
        clean_loss=clean[1],
        attack="autoattack",
        budget=float(eps),
        p=math.inf,
        cost=norm,
        loss="ce",
        steps=len(names),
        extra={
            "version": version,
            "attacks": list(names),
            "seed": seed,
            "eot_iter": adversary.apgd.eot_iter,
            "target_classes": targets,
            "image_shape": list(layout.image),
            "padding": layout.pad,
        },
    )
