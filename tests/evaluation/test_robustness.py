"""The robustness report: attacks per threat and budget, fresh draws, JSON, plot, DataTree."""

import importlib
import json
import re
import sys

import matplotlib.image as mpimg
import pytest
import torch

from pyro_otmdr import robustness
from pyro_otmdr.attacks import autoattack, pgd, w_pgd
from pyro_otmdr.data_space.autoattack import EXTRA_HINT
from tests.data_space.linear import fit_bayesian, linear_problem


def test_report_on_a_plain_network_matches_the_attacks(tmp_path):
    net, x, y = linear_problem()
    threats = ("w2-linf", "w2-l2", "linf", "l2")
    torch.manual_seed(0)
    report = robustness(net, None, x, y, threats=threats, budgets=(0.05, 0.1), steps=5)
    assert report.threats == list(threats) and report.budgets == [0.05, 0.1]
    assert report.robust_accuracy_fresh is None and report.clean_accuracy_fresh is None
    assert report.clean_accuracy == pytest.approx(0.8)
    direct = w_pgd(net, x, y, delta=0.1, steps=5)
    assert report.robust_accuracy["w2-linf"][1] == direct.robust_accuracy
    assert report.distance["w2-linf"][1] == direct.distance
    for threat in threats:
        assert all(a <= report.clean_accuracy for a in report.robust_accuracy[threat])
        assert all(
            d <= b + 1e-6 for d, b in zip(report.distance[threat], report.budgets, strict=True)
        )
        assert report.upsilon[threat] > 0
    torch.manual_seed(0)  # the W attacks draw nothing: PGD at 0.05 is the first user of the RNG
    assert report.robust_accuracy["linf"][0] == pgd(net, x, y, eps=0.05, steps=5).robust_accuracy

    data = json.loads(report.to_json(tmp_path / "robustness.json").read_text())
    assert data["robust_accuracy"] == report.robust_accuracy
    assert data["settings"]["protocol"] == "deterministic"
    image = mpimg.imread(report.plot(tmp_path / "robustness.png"))
    assert image.shape[0] > 100 and image.std() > 0
    assert "| w2-linf |" in report.table()


def test_report_on_a_sampled_posterior_reports_fresh_draws_and_joins_the_datatree():
    from pyro_otmdr.evaluation import evaluate

    model, guide, x, y = fit_bayesian("normal")
    report = robustness(model, guide, x, y, budgets=(0.1,), num_samples=4, steps=4)
    assert report.settings["num_draws"] == 4
    assert set(report.robust_accuracy_fresh) == {"w2-linf", "linf"}
    assert 0.0 <= report.clean_accuracy_fresh <= 1.0
    assert "(" in report.table()
    base = evaluate(model, guide, x, y, num_samples=4).to_datatree()
    tree = report.to_datatree(base)
    group = tree["robustness"].dataset
    assert group["robust_accuracy"].sel(threat="w2-linf", budget=0.1) == pytest.approx(
        report.robust_accuracy["w2-linf"][0]
    )
    assert "robust_accuracy_fresh" in group and "posterior_predictive" in tree.children
    assert "robustness" not in base.children


def test_report_on_a_point_estimate_has_no_fresh_draws():
    model, guide, x, y = fit_bayesian("delta")
    report = robustness(model, guide, x, y, threats=("w2-l2",), budgets=(0.1,), steps=3)
    assert report.robust_accuracy_fresh is None
    assert report.settings["num_draws"] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threats=("w1-linf",)), "'w2-linf', 'w2-l2', 'linf', 'l2'"),
        (dict(threats="linf"), "sequence of names"),
        (dict(budgets=(0.1, 0.0)), "every budget must be"),
        (dict(budgets=0.1), "sequence of numbers"),
    ],
)
def test_bad_report_arguments(kwargs, message):
    net, x, y = linear_problem()
    with pytest.raises(ValueError, match=message):
        robustness(net, None, x, y, **kwargs)


def shrink_to_the_mean(predict, x, y, budget, threat, options, callback):
    """A registered attack of the test below: every input moved halfway to the batch mean."""
    x_adv = (x + (x.mean(0, keepdim=True) - x).clamp(-budget, budget) / 2).clamp(0, 1)
    for i in range(threat.iterates(options)):
        callback(i, x_adv)
    result = pgd(predict, x, y, eps=budget, steps=1, batch_size=options["batch_size"])
    result.x_adv = x_adv
    return result


def test_a_new_threat_is_one_registration_line(monkeypatch):
    from pyro_otmdr.evaluation.threats import THREATS, Threat

    attack = f"{__name__}:shrink_to_the_mean"
    monkeypatch.setitem(THREATS, "shrink", Threat(float("inf"), "linf", attack))
    x, y, net = _plain_problem()
    report = robustness(net, None, x, y, threats=("shrink", "linf"), budgets=(0.1,), steps=2)
    assert report.threats == ["shrink", "linf"] and len(report.robust_accuracy["shrink"]) == 1
    assert report.upsilon["shrink"] == report.upsilon["linf"]  # the same geometry


def _plain_problem():
    torch.manual_seed(0)
    x, y = torch.rand(32, 4), torch.randint(3, (32,))
    return x, y, torch.nn.Linear(4, 3)


@pytest.fixture
def one_thread():
    """pyautoattack's loops run thousands of tiny ops: one thread spares the spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_the_autoattack_threats_run_autoattack_seeded_by_the_torch_rng():
    pytest.importorskip("pyautoattack")
    from pyro_otmdr.evaluation.robustness import run_autoattack
    from pyro_otmdr.evaluation.threats import THREATS

    net, x, y = linear_problem()
    torch.manual_seed(0)
    threats = ("autoattack-linf", "linf")
    report = robustness(net, None, x, y, threats=threats, budgets=(0.15,), steps=5)
    torch.manual_seed(0)  # the report's first draw is AutoAttack's seed
    direct = autoattack(net, x, y, eps=0.15, seed=int(torch.randint(2**31 - 1, ()).item()))
    assert report.robust_accuracy["autoattack-linf"] == [direct.robust_accuracy]
    assert report.distance["autoattack-linf"] == [direct.distance]
    assert direct.robust_accuracy <= report.robust_accuracy["linf"][0] + 1 / len(x)
    assert report.upsilon["autoattack-linf"] == report.upsilon["linf"]  # the same geometry
    assert "| autoattack-linf |" in report.table()
    # the progress bar counts steps * restarts iterates per pointwise attack: all of them
    options = dict(steps=5, w_loss="redlr", pgd_loss="ce", restarts=2, batch_size=256)
    ticks = []
    threat = THREATS["autoattack-l2"]
    result = run_autoattack(net, x, y, 0.5, threat, options, lambda t, _: ticks.append(t))
    assert ticks == list(range(1, threat.iterates(options) + 1)) and result.cost == "l2"


def test_the_autoattack_threats_without_the_extra_fail_before_any_attack(monkeypatch):
    module = importlib.import_module("pyro_otmdr.evaluation.robustness")
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import pyautoattack -> ImportError
    ran = []
    monkeypatch.setattr(module, "run_pgd", lambda *args: ran.append(args))
    net, x, y = linear_problem()
    with pytest.raises(ImportError, match=re.escape(EXTRA_HINT)):
        robustness(net, None, x, y, threats=("linf", "autoattack-l2"), budgets=(0.1,))
    assert not ran
