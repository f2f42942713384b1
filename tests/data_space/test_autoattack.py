"""AutoAttack through the optional extra: exact on a linear model, no weaker than PGD, feasible,
honest, quiet and seeded; rand on a resampling posterior; clear errors, with or without the extra.

The tests that run pyautoattack skip cleanly without it (the ``pyautoattack`` fixture); the
argument checks and the missing-extra error run either way."""

import logging
import math
import re
import subprocess
import sys

import pytest
import torch
from pyro.infer.autoguide import AutoNormal, init_to_sample

from pyro_otmdr.attacks import autoattack, pgd, posterior_predictive
from pyro_otmdr.bayes import bayesian
from pyro_otmdr.data_space.autoattack import (
    EXTRA_HINT,
    VERSIONS,
    MissingExtraError,
    _Layout,
)
from tests.conftest import EPS32

from .linear import DIM, NUM_CLASSES, N, linear_problem


@pytest.fixture
def pyautoattack():
    """Skip without the extra."""
    return pytest.importorskip("pyautoattack")


@pytest.fixture(autouse=True)
def one_thread():
    """pyautoattack's loops run thousands of tiny ops: one thread spares the spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def exact_robust_accuracy(net, x, y, eps, norm):
    """The share of examples that no input in the ``eps``-ball misclassifies, for logits
    ``W x + b`` and no box: correct, with every margin ``(w_y - w_j) x + b_y - b_j`` above
    ``eps ||w_y - w_j||_*`` (the dual norm: l1 for linf, l2 for l2). The box can only help the
    defender, so every honest attack reports at least this."""
    with torch.no_grad():
        logits = net(x)
        robust = logits.argmax(-1) == y
        dual = 1.0 if norm == "linf" else 2.0
        for j in range(NUM_CLASSES):
            margin = logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]
            needed = eps * torch.linalg.vector_norm(net.weight[y] - net.weight[j], dual, dim=1)
            robust &= (y == j) | (margin > needed)
    return float(robust.double().mean())


def check_feasible_and_honest(result, net, x, y, eps, norm, tol):
    """``x_adv`` in every ball and the box; the robust accuracy is the accuracy at ``x_adv``."""
    moves = (result.x_adv - x).flatten(1)
    sizes = moves.abs().amax(1) if norm == "linf" else moves.norm(dim=1)
    assert float(sizes.max()) <= eps + tol and result.distance <= eps + tol
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        correct = net(result.x_adv).argmax(-1) == y
    assert result.robust_accuracy == pytest.approx(float(correct.double().mean()))
    assert result.robust_accuracy == result.accuracies[-1] <= result.clean_accuracy
    assert all(a >= b for a, b in zip(result.accuracies, result.accuracies[1:], strict=False))
    assert result.attack == "autoattack" and math.isinf(result.p) and result.cost == norm


@pytest.mark.parametrize(
    "norm, eps, attacks",
    [("linf", 0.05, None), ("l2", 0.1, ("apgd-ce", "apgd-t", "fab-t"))],
    ids=["linf-standard", "l2-without-square"],
)
def test_exact_on_a_linear_model_and_no_weaker_than_pgd(pyautoattack, norm, eps, attacks):
    net, x, y = linear_problem()
    net.train()
    x_before, calls = x.clone(), []
    result = autoattack(
        net, x, y, eps=eps, norm=norm, attacks=attacks, callback=lambda t, _: calls.append(t)
    )
    torch.manual_seed(0)
    pgd20 = pgd(net, x, y, eps=eps, norm=norm, steps=20)
    exact = exact_robust_accuracy(net, x, y, eps, norm)
    print(f"{norm} eps={eps}: AutoAttack {result.robust_accuracy}, PGD-20 "
          f"{pgd20.robust_accuracy}, exact {exact}")  # fmt: skip
    assert result.clean_accuracy == pytest.approx(0.8)  # every 5th label is wrong on purpose
    assert exact <= result.robust_accuracy <= pgd20.robust_accuracy + 1 / N
    assert result.robust_accuracy == pytest.approx(exact)  # the linear model's exact figure
    # float64 inputs: x + clamp(x_adv - x) rounds once more, within a few float64 eps
    check_feasible_and_honest(result, net, x, y, eps, norm, tol=4 * torch.finfo(x.dtype).eps)
    names = list(attacks or VERSIONS["standard"])
    assert result.extra["attacks"] == names and result.steps == len(names)
    assert calls == list(range(1, len(names) + 1)) and len(result.losses) == len(names)
    assert result.extra["target_classes"] == NUM_CLASSES - 1
    assert torch.equal(x, x_before) and net.training  # x untouched, the mode restored
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("norm, eps", [("linf", 0.25), ("l2", 0.5)])
@pytest.mark.parametrize("attack", ["fab-t", "square"])
def test_each_attack_alone_is_feasible_and_honest(pyautoattack, attack, norm, eps):
    """A wide ball, where Square stops early; the 6 features as padded 4x4 or 5x5 images."""
    net, x, y = linear_problem()
    rng, previous = torch.get_rng_state(), sys.gettrace()

    def tracer(frame, event, arg):  # a debugger's or a coverage tool's
        return None

    sys.settrace(tracer)
    try:
        result = autoattack(net, x, y, eps=eps, norm=norm, attacks=(attack,), seed=3)
    finally:
        after = sys.gettrace()
        sys.settrace(previous)
    assert result.robust_accuracy >= exact_robust_accuracy(net, x, y, eps, norm)
    assert result.robust_accuracy < result.clean_accuracy  # it broke something
    check_feasible_and_honest(result, net, x, y, eps, norm, tol=4 * torch.finfo(x.dtype).eps)
    side = 4 if norm == "linf" else 5  # 6 features in a 3x3 block, a padding row and column
    assert result.extra["image_shape"] == [1, side, side]
    assert result.extra["padding"] == side * side - DIM
    # FAB backpropagates through the model: still no parameter gradient; pyautoattack reseeds
    # the global RNG and ends a check with sys.settrace(None): both put back
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng) and after is tracer


def test_rand_on_a_resampling_posterior_predictive_is_valid_and_seeded(pyautoattack):
    _, x, _ = linear_problem()
    x = x.float()
    model = bayesian(torch.nn.Linear(DIM, NUM_CLASSES), num_data=len(x))
    guide = AutoNormal(model, init_loc_fn=init_to_sample, init_scale=0.05)
    guide(x, torch.zeros(len(x), dtype=torch.long))  # set the autoguide up: prior draws
    y = posterior_predictive(model, guide, num_samples=16)(x).argmax(-1)  # its own labels
    predict = posterior_predictive(model, guide, num_samples=1, resample=True)
    assert not torch.equal(predict(x), predict(x))  # a fresh posterior draw at every forward
    rng = torch.get_rng_state()
    runs = [
        autoattack(predict, x, y, eps=0.05, version="rand", eot_iter=1, seed=1) for _ in range(2)
    ]
    result = runs[0]
    assert 0.0 <= result.robust_accuracy <= result.clean_accuracy <= 1.0
    assert result.clean_accuracy > 0.5  # something to attack
    # float32 inputs: one rounding of x + (x_adv - x), within float32 eps
    assert result.distance <= 0.05 + EPS32
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.extra["version"] == "rand" and result.extra["attacks"] == ["apgd-ce", "apgd-dlr"]
    assert result.extra["eot_iter"] == 1  # pyautoattack's 20 forwards per gradient, cut short
    # the seed drives pyautoattack and the predictive's draws: the same run twice
    assert torch.equal(runs[1].x_adv, result.x_adv) and runs[1].to_dict() == result.to_dict()
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG as it was


class NoisyLinear(torch.nn.Module):
    """A randomised defence: Gaussian noise on the input of every forward."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.1 * torch.randn_like(x))


def test_quiet_unless_verbose(pyautoattack, capsys, caplog, monkeypatch):
    net, x, y = linear_problem()
    logger = logging.getLogger("auto-attack")
    before = (logger.level, logger.disabled, list(logger.handlers))
    # the standard version on a randomised predictor makes pyautoattack warn
    autoattack(NoisyLinear(net), x, y, eps=0.05, attacks=("apgd-ce",))
    assert capsys.readouterr() == ("", "") and not caplog.records
    autoattack(NoisyLinear(net), x, y, eps=0.05, attacks=("apgd-ce",), verbose=True)
    messages = [r.getMessage() for r in caplog.records if r.name == "auto-attack"]
    assert any("randomized defense" in m for m in messages)  # to the caller's logging
    # with no logging set up (no handler anywhere) it prints to stderr itself
    monkeypatch.setattr(logger, "hasHandlers", lambda: False)
    autoattack(net, x, y, eps=0.05, attacks=("apgd-ce",), verbose=True)
    assert "autoattack: robust accuracy after APGD-CE" in capsys.readouterr().err
    assert (logger.level, logger.disabled, list(logger.handlers)) == before


def test_another_box_and_image_shaped_inputs(pyautoattack):
    """Inputs in [-1, 1] are the unit box's, scaled: the same attack, eps scaled alike."""
    net, x, y = linear_problem()
    images = x.reshape(N, 1, 2, 3)
    scaled = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(DIM, NUM_CLASSES).double())
    with torch.no_grad():
        scaled[1].weight.copy_(net.weight / 2)  # scaled(2 x - 1) == net(x)
        scaled[1].bias.copy_(net.bias + net.weight.sum(1) / 2)
    unit = autoattack(net, x, y, eps=0.05, attacks=("apgd-ce",))
    other = autoattack(scaled, 2 * images - 1, y, eps=0.1, attacks=("apgd-ce",), box=(-1, 1))
    assert other.robust_accuracy == unit.robust_accuracy and other.budget == 0.1
    assert other.extra["image_shape"] == [1, 2, 3]  # an image is attacked as it is
    assert other.x_adv.shape == images.shape and other.x_adv.abs().max() <= 1
    assert (other.x_adv - (2 * images - 1)).abs().max() <= 0.1 + 4 * torch.finfo(x.dtype).eps


@pytest.mark.parametrize(
    "num_classes, kwargs, message",
    [
        (3, {}, "apgd-t needs at least 4 classes, got 3"),
        (2, dict(version="rand"), "apgd-dlr needs at least 3 classes, got 2"),
    ],
)
def test_too_few_classes_for_an_attack(pyautoattack, num_classes, kwargs, message):
    net = torch.nn.Linear(DIM, num_classes)
    x, y = torch.rand(8, DIM), torch.randint(num_classes, (8,))
    with pytest.raises(ValueError, match=message):
        autoattack(net, x, y, eps=0.05, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=0.0), "eps must be a number > 0, got 0.0"),
        (dict(eps=-0.1), "eps must be a number > 0"),
        (dict(eps=float("nan")), "eps must be a number > 0"),
        (dict(norm="l1"), "unknown cost 'l1'; choose one of 'linf', 'l2'"),
        (dict(version="plus"), "unknown version 'plus'; choose one of 'standard', 'rand'"),
        (dict(version="rand", attacks=("fab-t",)), "unknown attack 'fab-t'; choose one of"),
        (dict(attacks="apgd-ce"), "attacks must be a non-empty sequence of names"),
        (dict(attacks=()), "attacks must be a non-empty sequence of names"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(eot_iter=0), "eot_iter must be a positive int"),
        (dict(seed=-1), "seed must be an int >= 0"),
        (dict(x=torch.full((N, DIM), 2.0)), "outside the box"),
    ],
)
def test_bad_arguments(kwargs, message):
    """Checked before pyautoattack is imported: the same errors with or without the extra."""
    net, x, y = linear_problem()
    kwargs = {"x": x, "eps": 0.05, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        autoattack(net, kwargs.pop("x"), y, **kwargs)


def test_without_the_extra_a_clear_error(monkeypatch):
    """Runs with the extra installed too: the import is made to fail."""
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import pyautoattack -> ImportError
    net, x, y = linear_problem()
    with pytest.raises(ImportError, match=re.escape(EXTRA_HINT)) as caught:
        autoattack(net, x, y, eps=0.05)
    assert isinstance(caught.value, MissingExtraError)
    assert isinstance(caught.value, RuntimeError)  # the otmdr command reports it in one line


@pytest.mark.parametrize(
    "shape, norm, image, pad",
    [
        ((6,), "linf", (1, 4, 4), 10),  # a 3x3 block, then a row and a column of padding
        ((6,), "l2", (1, 5, 5), 19),  # l2 Square needs a side >= 5
        ((64,), "l2", (1, 9, 9), 17),
        ((2, 3), "linf", (1, 4, 4), 10),
        ((1,), "linf", (1, 2, 2), 3),
        ((1, 4, 4), "l2", (1, 5, 5), 9),
        ((1, 4, 4), "linf", (1, 4, 4), 0),  # an image as it is
        ((3, 32, 32), "l2", (3, 32, 32), 0),
    ],
)
def test_layout_as_images_and_back(shape, norm, image, pad):
    layout = _Layout(shape, norm)
    assert (layout.image, layout.pad) == (image, pad)
    x = torch.rand(5, *shape)
    images = layout.to_images(x)
    assert images.shape == (5, *image) and torch.equal(layout.to_inputs(images), x)
    assert torch.allclose(images.sum(), x.sum()) and layout.to_inputs(images[:0]).shape == (
        0,
        *shape,
    )
    if pad:  # the last row and column hold only padding (Square never moves them again)
        assert not images[:, :, -1].any() and not images[:, :, :, -1].any()


def test_importing_the_package_does_not_import_the_extra():
    code = (
        "import sys; from pyro_otmdr.attacks import autoattack; "
        "assert 'pyautoattack' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
