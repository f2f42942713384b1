"""Data-robust training objectives in torch terms: an attack, then a loss on two sets of logits.

Each objective is one training method, split into the two halves every front end needs:

* ``adversarial(predict, x, y) -> x_adv``: the inner maximisation at fixed weights (callers put
  the network in eval mode; no parameter gets a gradient);
* ``losses(clean_logits, adv_logits, y) -> (B,)``: the robust loss, one entry per example, whose
  mean is the objective (for ARMOR, which couples the examples, every entry carries the batch's
  dual: ``per_example_mean`` is then ``False``).

The methods (see the docs, Algorithms: AT and TRADES, WDAT, ARMOR_D):

* :class:`AdversarialLoss`: Madry's PGD adversarial training, CE at ``x_adv`` (``mix`` blends in
  the clean CE);
* :class:`TradesLoss`: ``CE(x) + beta * KL(p(x) || p(x'))``, ``x'`` from a KL ascent in the
  ``eps``-ball;
* :class:`WdatLoss`: W-PGD-Budget on ReDLR over the batch within ``W_2 <= delta_B``,
  ``delta_B = delta * Upsilon_B / Upsilon_hat``, then CE plus TRADES' KL or CE at the attacked
  inputs (parts reconstructed, see the class);
* :class:`ArmorLoss`: ARMOR_D with the KL divergence, the batch's losses at the transported
  inputs re-weighted within a KL budget (:func:`~.armor.armor_kl`).

Called on a plain ``nn.Module``, an objective is a training loss (attack in eval mode, then the
forward passes in the module's own mode)::

    loss_fn = TradesLoss(eps=0.1, beta=6.0)
    loss = loss_fn(net, x, y)            # a scalar, ready for .backward()

The Pyro losses of :mod:`~pyro_otmdr.data_space.elbo` put the same objectives in place of an
ELBO's likelihood.

A batch with a NaN or infinite input, and an ARMOR batch with a non-finite loss, raise
:class:`~pyro_otmdr.NonFiniteLossError` (a training loop skips the batch) before anything is
updated; inputs outside the box are a ``ValueError`` (a configuration error).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..model_space.step import NonFiniteLossError
from .armor import ArmorDual, armor_kl
from .common import (
    NonFiniteValueError,
    attack_mode,
    check_box,
    check_choice,
    check_inputs,
    check_positive,
    dual_exponent,
)
from .inner import ball_ascent, batch_sensitivity, w_ball_ascent
from .losses import ce, get_loss

__all__ = [
    "WDAT_ATTACK_LOSSES",
    "WDAT_OUTERS",
    "AdversarialLoss",
    "ArmorLoss",
    "RobustObjective",
    "TradesLoss",
    "WdatLoss",
    "batch_budget",
    "kl_to_clean",
]

Predict = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_EPS = 8 / 255
"""The linf radius of the reference scripts (Madry CIFAR-10, TRADES' 0.031, ARMOR's 0.031)."""


def kl_to_clean(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(clean) || softmax(adv))`` per example, ``(B,)``: TRADES' direction.

    Usage::

        import torch
        from pyro_otmdr.data_space import kl_to_clean

        net, x = torch.nn.Linear(4, 3), torch.rand(8, 4)
        x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
        kl = kl_to_clean(net(x), net(x_adv))       # (8,), TRADES' term per example
        assert kl.shape == (8,) and (kl >= -1e-6).all()
        assert kl_to_clean(net(x), net(x)).abs().max() < 1e-6
    """
    clean = F.log_softmax(clean_logits, dim=-1)
    return (clean.exp() * (clean - F.log_softmax(adv_logits, dim=-1))).sum(-1)


def batch_budget(
    delta: float, upsilon_b: torch.Tensor, upsilon_hat: torch.Tensor | float
) -> torch.Tensor:
    """WDAT's share of the W2 budget for one batch: ``delta * Upsilon_B / Upsilon_hat``.

    With ``Upsilon_hat`` the sensitivity of the whole set, ``Upsilon^2 = mean_B Upsilon_B^2``
    over equal batches, so the budgets average back to ``delta`` in the W2 sense:
    ``(mean_B delta_B^2)^(1/2) = delta`` (derived in the docs, Algorithms: WDAT).
    """
    return delta * upsilon_b / torch.as_tensor(upsilon_hat).clamp_min(1e-12)


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class RobustObjective:
    """What the data-robust objectives share: the ball, the steps, the box and the checks.

    :param eps: the radius of every example's ball (linf or l2 cost, in the box's units).
    :param steps: ascent steps of the inner maximisation (10 in the reference scripts).
    :param step_size: default ``eps / 4`` (Madry's 2/255 for 8/255, TRADES' 0.007 for 0.031).
    :param norm: the cost, ``"linf"`` or ``"l2"``.
    :param box: the inputs' box; every adversarial input is clamped to it.
    """

    #: whether ``losses`` needs the clean logits (else it is called with ``None``).
    needs_clean = True
    #: whether the objective of a batch is the mean of per-example terms (not so for ARMOR).
    per_example_mean = True
    #: the inputs whose values :meth:`inputs_checked` has just checked.
    _vetted: torch.Tensor | None = None

    def __init__(
        self,
        *,
        eps: float = DEFAULT_EPS,
        steps: int = 10,
        step_size: float | None = None,
        norm: str = "linf",
        box: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        check_positive("eps", eps)
        check_positive("steps", steps, int)
        step_size = eps / 4 if step_size is None else step_size
        check_positive("step_size", step_size)
        check_choice("norm", norm, ("linf", "l2"))
        self.eps, self.steps, self.step_size, self.norm = float(eps), steps, float(step_size), norm
        self.s = dual_exponent(norm)
        self.box = (float(box[0]), float(box[1]))

    def adversarial(self, predict: Predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial inputs of the batch at the predictor's current weights."""
        raise NotImplementedError

    def losses(
        self, clean_logits: torch.Tensor | None, adv_logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The robust loss per example, ``(B,)``; its mean is the batch's objective."""
        raise NotImplementedError

    def __call__(
        self,
        net: Predict,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean robust loss of ``net`` on ``(x, y)``, attacking first unless ``x_adv`` is
        given (e.g. made once per step before a sharpness-aware optimiser splits the batch)."""
        if x_adv is None:
            with attack_mode(net):
                x_adv = self.adversarial(net, x, y)
        clean = net(x) if self.needs_clean else None
        return self.losses(clean, net(x_adv), y).mean()

    @contextlib.contextmanager
    def inputs_checked(self, x: torch.Tensor) -> Iterator[None]:
        """Check the batch's inputs now, before a model or a guide sees them (finite and inside
        the box: one device sync); within the block, :meth:`adversarial` on this very tensor
        does not check its values again.

        :raises NonFiniteLossError: for a NaN or infinite input: skip the batch.
        :raises ValueError: for inputs outside the box.

        Usage::

            import torch
            from pyro_otmdr.data_space import TradesLoss

            objective, predict = TradesLoss(eps=0.1, steps=2), torch.nn.Linear(4, 3)
            x, y = torch.rand(8, 4), torch.randint(3, (8,))
            with objective.inputs_checked(x):      # checked once, here
                x_adv = objective.adversarial(predict, x, y)
            assert x_adv.shape == x.shape
        """
        self._check_values(x)
        previous, self._vetted = self._vetted, x
        try:
            yield
        finally:
            self._vetted = previous

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        check_inputs(x, y, self.box, values=False)
        if x is not self._vetted:
            self._check_values(x)

    def _check_values(self, x: torch.Tensor) -> None:
        try:
            check_box(x, self.box)
        except NonFiniteValueError as error:
            raise NonFiniteLossError(
                f"the batch holds a non-finite input ({error.value}) at index {error.index}: "
                "nothing was updated (skip this batch, or clean the data: the inputs must be "
                f"finite and inside the box [{self.box[0]:g}, {self.box[1]:g}])"
            ) from error

    def _pgd(self, predict: Predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Madry's inner loop: CE ascent from a uniform random point of the ball."""
        return ball_ascent(
            lambda z: ce(predict(z), y),
            x,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            s=self.s,
            start="uniform",
            box=self.box,
        )

    def _trades_inner(self, predict: Predict, x: torch.Tensor) -> torch.Tensor:
        """TRADES' inner loop: KL-to-clean ascent from ``x + 0.001 N(0, I)``."""
        with torch.no_grad():
            clean = predict(x)
        return ball_ascent(
            lambda z: kl_to_clean(clean, predict(z)),
            x,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            s=self.s,
            start="normal",
            box=self.box,
        )


class AdversarialLoss(RobustObjective):
    """PGD adversarial training (Madry et al., arXiv 1706.06083): CE at the PGD inputs.

    :param mix: weight of the clean CE, ``(1 - mix) CE(x_adv) + mix CE(x)``; 0 (Madry) by default.

    Other parameters as :class:`RobustObjective`. Usage::

        import torch
        from pyro_otmdr.data_space import AdversarialLoss

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(8, 4), torch.randint(3, (8,))
        loss = AdversarialLoss(eps=0.1, steps=3)(net, x, y)
        loss.backward()                            # a scalar, ready for an optimiser step
    """

    def __init__(self, *, mix: float = 0.0, **ball) -> None:
        super().__init__(**ball)
        _check_fraction("mix", mix)
        self.mix = float(mix)
        self.needs_clean = self.mix > 0

    def adversarial(self, predict: Predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        return self._pgd(predict, x, y)

    def losses(self, clean_logits, adv_logits, y):
        adv = ce(adv_logits, y)
        return (
            adv if clean_logits is None else (1 - self.mix) * adv + self.mix * ce(clean_logits, y)
        )


class TradesLoss(RobustObjective):
    """TRADES (Zhang et al., arXiv 1901.08573): ``CE(x) + beta * KL(p(x) || p(x'))`` per example.

    :param beta: weight of the KL term (6, TRADES' CIFAR-10 value; ``beta = 0`` is plain CE).

    Other parameters as :class:`RobustObjective`. Usage::

        import torch
        from pyro_otmdr.data_space import TradesLoss

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(8, 4), torch.randint(3, (8,))
        loss = TradesLoss(eps=0.1, beta=6.0, steps=3)(net, x, y)
        assert loss >= torch.nn.functional.cross_entropy(net(x), y)   # CE + beta * KL >= CE
    """

    def __init__(self, *, beta: float = 6.0, **ball) -> None:
        super().__init__(**ball)
        _check_non_negative("beta", beta)
        self.beta = float(beta)

    def adversarial(self, predict: Predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        return self._trades_inner(predict, x)

    def losses(self, clean_logits, adv_logits, y):
        return ce(clean_logits, y) + self.beta * kl_to_clean(clean_logits, adv_logits)


#: WDAT's training attack losses, the paper's first: ``"redlr"`` (a misclassified example has no
#: gradient, so it gets no budget and does not move), ``"ce"``, and ``"kl"`` (TRADES' ascent with
#: the budget from the clean CE, this project's first reconstruction).
WDAT_ATTACK_LOSSES = ("redlr", "ce", "kl")
#: WDAT's outer losses: ``"trades"``, ``CE(x) + beta KL(p(x) || p(x'))``; ``"adversarial"``,
#: ``CE(x')``.
WDAT_OUTERS = ("trades", "adversarial")


class WdatLoss(TradesLoss):
    """Wasserstein distributional adversarial training (Bai, He, Jiang, Obloj 2025): the batch
    attacked as one distribution within its share ``delta_B`` of a W2 budget, then CE (see the
    docs, Algorithms: WDAT, for what the paper states and what is reconstructed).

    The attack (the paper's W-PGD-Budget on ReDLR by default): ``Upsilon_B``, the batch's
    first-order W2 sensitivity of the attack loss at the clean inputs
    (:func:`~.inner.batch_sensitivity`), is folded into a running estimate ``Upsilon_hat^2``:
    the plain mean over the first ``budget_subset`` batches, then an exponential moving average
    (``decay``). The batch gets ``delta_B = delta * Upsilon_B / Upsilon_hat`` and W-PGD moves it
    from the clean inputs within ``W_2 <= delta_B``. With ReDLR a misclassified example has no
    gradient: it keeps its place and the budget goes to the examples near the boundary.

    :param delta: the W2 budget (the W-PGD evaluation's 8/255 by default).
    :param beta: weight of the KL term of ``outer="trades"``.
    :param steps: W-PGD steps, of ``step_ratio * delta_B / steps`` each.
    :param step_ratio: 1.875, the step ratio of the W-PGD attack.
    :param cost: ``"linf"`` or ``"l2"``, the cost of moving one input.
    :param attack_loss: one of :data:`WDAT_ATTACK_LOSSES`; ``"kl"`` ascends TRADES' KL from
        ``x + 0.001 N(0, I)`` with the budget from the clean CE (a departure from the paper).
    :param outer: one of :data:`WDAT_OUTERS`: ``"trades"``, ``CE(x) + beta KL(p(x) || p(x'))``,
        or ``"adversarial"``, ``CE(x')`` (the paper does not say which).
    :param budget_subset: batches averaged to start the estimate (0: the moving average from the
        first batch).
    :param decay: of the moving average of ``Upsilon_B^2``, in [0, 1).

    Usage::

        import torch
        from pyro_otmdr.data_space import WdatLoss

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(8, 4), torch.randint(3, (8,))
        loss_fn = WdatLoss(delta=0.1, steps=3)
        loss = loss_fn(net, x, y)
        budget = loss_fn.last_budget   # delta_B: delta for the first batch (0 if all are wrong)
        assert torch.isclose(budget, torch.tensor(0.1)) or budget == 0
    """

    def __init__(
        self,
        *,
        delta: float = DEFAULT_EPS,
        beta: float = 6.0,
        steps: int = 10,
        step_ratio: float = 1.875,
        cost: str = "linf",
        attack_loss: str = "redlr",
        outer: str = "trades",
        budget_subset: int = 10,
        decay: float = 0.9,
        box: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        check_positive("delta", delta)
        super().__init__(eps=delta, beta=beta, steps=steps, norm=cost, box=box)
        check_positive("step_ratio", step_ratio)
        check_choice("attack_loss", attack_loss, WDAT_ATTACK_LOSSES)
        check_choice("outer", outer, WDAT_OUTERS)
        if not (isinstance(budget_subset, int) and budget_subset >= 0):
            raise ValueError(f"budget_subset must be an int >= 0, got {budget_subset!r}")
        if not (isinstance(decay, int | float) and 0.0 <= decay < 1.0):
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.delta, self.step_ratio, self.decay = float(delta), float(step_ratio), float(decay)
        self.attack_loss, self.outer, self.budget_subset = attack_loss, outer, budget_subset
        self.needs_clean = outer == "trades"
        self.upsilon_sq: torch.Tensor | None = None
        self.batches_seen: torch.Tensor | None = None
        self.last_budget: torch.Tensor | None = None

    def budget(self, upsilon_b: torch.Tensor) -> torch.Tensor:
        """Fold ``Upsilon_B`` into the running estimate; return ``delta_B`` (a 0-d tensor).

        The estimate of ``Upsilon^2`` is the mean of ``Upsilon_B^2`` over the first
        ``budget_subset`` finite batches, then ``decay * old + (1 - decay) * Upsilon_B^2``. A NaN
        or infinite ``Upsilon_B`` leaves the estimate as it was, with no device sync: one bad
        batch does not poison the budgets of the batches after it.
        """
        upsilon_b = upsilon_b.detach()
        square = upsilon_b.square()
        finite = square.isfinite()
        if self.upsilon_sq is None:
            seen = finite.to(square.dtype)
        else:
            old = self.upsilon_sq.to(square.device)  # a loaded state comes on the CPU
            count = self._seen(square)
            weight = torch.where(
                count < self.budget_subset, 1 / (count + 1), torch.full_like(count, 1 - self.decay)
            )
            folded = torch.where(old.isfinite(), old + weight * (square - old), square)
            square = torch.where(finite, folded, old)
            seen = count + finite.to(count.dtype)
        self.upsilon_sq, self.batches_seen = square, seen
        return batch_budget(self.delta, upsilon_b, self.upsilon_sq.sqrt())

    def _seen(self, like: torch.Tensor) -> torch.Tensor:
        if self.batches_seen is None:  # a state saved before the count was kept
            return torch.full_like(like, float(self.budget_subset))
        return self.batches_seen.to(like.device, like.dtype)

    def adversarial(self, predict: Predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        if self.attack_loss == "kl":
            return self._kl_attack(predict, x, y)
        attack = get_loss(self.attack_loss)

        def loss_fn(z: torch.Tensor) -> torch.Tensor:
            return attack(predict(z), y)

        self.last_budget = self.budget(batch_sensitivity(loss_fn, x, s=self.s))
        return self._w_pgd(loss_fn, x, start="none")

    def _kl_attack(self, predict: Predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The departure ``attack_loss="kl"``: budget from the clean CE, KL ascent."""
        self.last_budget = self.budget(batch_sensitivity(lambda z: ce(predict(z), y), x, s=self.s))
        with torch.no_grad():
            clean = predict(x)
        return self._w_pgd(lambda z: kl_to_clean(clean, predict(z)), x, start="normal")

    def _w_pgd(self, loss_fn: Callable, x: torch.Tensor, *, start: str) -> torch.Tensor:
        return w_ball_ascent(
            loss_fn,
            x,
            delta=self.last_budget,
            steps=self.steps,
            step_ratio=self.step_ratio,
            s=self.s,
            start=start,
            box=self.box,
        )

    def losses(self, clean_logits, adv_logits, y):
        if self.outer == "adversarial":
            return ce(adv_logits, y)
        return super().losses(clean_logits, adv_logits, y)

    def state_dict(self) -> dict:
        """The running estimate and the count of batches in it, to resume training with them."""
        return {"upsilon_sq": self.upsilon_sq, "batches_seen": self.batches_seen}

    def load_state_dict(self, state: dict) -> None:
        self.upsilon_sq = state["upsilon_sq"]
        self.batches_seen = state.get("batches_seen")


class ArmorLoss(RobustObjective):
    """ARMOR_D with the KL divergence (Birrell & Ebrahimi; see the docs, Algorithms: ARMOR_D).

    The per-example losses ``L_i`` at the transported inputs (``base="at"``: CE at the PGD
    inputs; ``base="trades"``: ``CE(x_i) + beta KL(p(x_i) || p(x'_i))`` after TRADES' ascent) are
    aggregated by the dual ``inf_lambda budget*lambda + tau log mean_i exp(L_i / tau)``,
    ``tau = lambda + kappa``, with ``lambda`` found per batch by bisection and held fixed, so
    the gradient re-weights the examples by ``softmax(L_i / tau)``
    (:func:`~.armor.armor_kl`). The objective is ``mix * mean CE(x) + (1 - mix) * ARMOR(L)``.

    Defaults are those of the reference KL script for CIFAR-10 with the TRADES base
    (``budget=0.02, kappa=0.1, mix=0.5``; that script's ``beta`` is 19), with the AT base here
    by default, and the reference 10-step attack in the ``eps``-ball.

    :param budget: the KL budget ``epsilon`` > 0.
    :param kappa: the temperature floor >= 0.
    :param mix: weight of the clean CE, in [0, 1] (the reference's ``t``).
    :param base: ``"at"`` or ``"trades"``, the per-example losses that are re-weighted.
    :param beta: weight of the KL term of the TRADES base.
    :param lambda_max: the cap on ``lambda``.

    Other parameters as :class:`RobustObjective`. Usage::

        import torch
        from pyro_otmdr.data_space import ArmorLoss

        net = torch.nn.Linear(4, 3)
        x, y = torch.rand(8, 4), torch.randint(3, (8,))
        loss_fn = ArmorLoss(eps=0.1, budget=0.02, steps=3)
        loss = loss_fn(net, x, y)
        weights = loss_fn.last_dual.weights       # how the batch was re-weighted
        assert weights.shape == (8,) and torch.isclose(weights.sum(), torch.tensor(1.0))
    """

    per_example_mean = False

    def __init__(
        self,
        *,
        budget: float = 0.02,
        kappa: float = 0.1,
        mix: float = 0.5,
        base: str = "at",
        beta: float = 6.0,
        lambda_max: float = 100.0,
        **ball,
    ) -> None:
        super().__init__(**ball)
        check_positive("budget", budget)
        _check_non_negative("kappa", kappa)
        _check_fraction("mix", mix)
        check_choice("base", base, ("at", "trades"))
        _check_non_negative("beta", beta)
        check_positive("lambda_max", lambda_max)
        self.budget, self.kappa, self.mix, self.base = float(budget), float(kappa), float(mix), base
        self.beta, self.lambda_max = float(beta), float(lambda_max)
        self.needs_clean = self.mix > 0 or base == "trades"
        self.last_dual: ArmorDual | None = None

    def adversarial(self, predict: Predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check(x, y)
        return self._pgd(predict, x, y) if self.base == "at" else self._trades_inner(predict, x)

    def transported_losses(self, clean_logits, adv_logits, y) -> torch.Tensor:
        """The per-example losses ``L_i`` that the dual re-weights."""
        if self.base == "at":
            return ce(adv_logits, y)
        return ce(clean_logits, y) + self.beta * kl_to_clean(clean_logits, adv_logits)

    def losses(self, clean_logits, adv_logits, y):
        try:
            dual = armor_kl(
                self.transported_losses(clean_logits, adv_logits, y),
                budget=self.budget,
                kappa=self.kappa,
                lambda_max=self.lambda_max,
            )
        except NonFiniteValueError as error:
            raise NonFiniteLossError(
                f"ARMOR: the loss of example {error.index[0]} is {error.value}; nothing was "
                "updated (skip this batch, or lower the learning rate)"
            ) from error
        self.last_dual = dual
        robust = (1 - self.mix) * dual.loss.expand(y.shape[0])
        return robust if self.mix == 0 else robust + self.mix * ce(clean_logits, y)
