"""End-to-end tests of pyro_otmdr.evaluation on a small Bayesian MLP trained on sklearn digits."""

import warnings

import matplotlib

matplotlib.use("Agg")

import arviz as az
import matplotlib.image as mpimg
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn import PyroModule, PyroSample
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from pyro_otmdr.evaluation import EvaluationResult, evaluate
from tests.conftest import EPS32

NUM_CLASSES = 10


class DigitsBNN(PyroModule):
    """64-16-10 MLP with standard-normal priors on every weight and bias."""

    def __init__(self, num_data: int, hidden: int = 16, device: str = "cpu") -> None:
        super().__init__()
        self.num_data = num_data
        zero = torch.zeros((), device=device)
        self.fc1 = PyroModule[torch.nn.Linear](64, hidden, device=device)
        self.fc1.weight = PyroSample(dist.Normal(zero, 1.0).expand([hidden, 64]).to_event(2))
        self.fc1.bias = PyroSample(dist.Normal(zero, 1.0).expand([hidden]).to_event(1))
        self.fc2 = PyroModule[torch.nn.Linear](hidden, NUM_CLASSES, device=device)
        self.fc2.weight = PyroSample(
            dist.Normal(zero, 1.0).expand([NUM_CLASSES, hidden]).to_event(2)
        )
        self.fc2.bias = PyroSample(dist.Normal(zero, 1.0).expand([NUM_CLASSES]).to_event(1))

    def forward(self, x, y=None):
        logits = self.fc2(torch.relu(self.fc1(x)))
        with pyro.plate("data", size=self.num_data, subsample_size=x.shape[0]):
            return pyro.sample("obs", dist.Categorical(logits=logits), obs=y)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return {
        "train": (x[:1200], y[:1200]),
        "val": (x[1200:1400], y[1200:1400]),
        "test": (x[1400:], y[1400:]),
        "ood": torch.rand(150, 64, generator=torch.Generator().manual_seed(1)),
    }


def _train(guide_cls, digits, steps, **guide_kwargs):
    pyro.set_rng_seed(0)
    x, y = digits["train"]
    model = DigitsBNN(len(x))
    guide = guide_cls(model, **guide_kwargs)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=generator)
        svi.step(x[idx], y[idx])
    return model, guide


@pytest.fixture(scope="module")
def normal_fit(digits):
    return _train(AutoNormal, digits, steps=250, init_scale=0.05)


@pytest.fixture(scope="module")
def delta_fit(digits):
    return _train(AutoDelta, digits, steps=150)


@pytest.fixture(scope="module")
def normal_result(digits, normal_fit):
    model, guide = normal_fit
    pyro.set_rng_seed(123)
    return evaluate(
        model,
        guide,
        *digits["test"],
        num_samples=32,
        x_val=digits["val"][0],
        y_val=digits["val"][1],
        x_ood=digits["ood"],
    )


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------


def test_autonormal_metrics_are_sensible(normal_result, digits):
    r = normal_result
    x, y = digits["test"]
    assert isinstance(r, EvaluationResult)
    assert r.num_draws == 32
    assert r.probs.shape == (len(x), NUM_CLASSES) and r.probs.device.type == "cpu"
    torch.testing.assert_close(r.probs.sum(-1), torch.ones(len(x), dtype=r.probs.dtype))
    assert r.log_likelihood.shape == (32, len(x)) and bool((r.log_likelihood <= 0).all())
    assert r.predictive_samples.shape == (32, len(x))
    assert int(r.predictive_samples.min()) >= 0
    assert int(r.predictive_samples.max()) < NUM_CLASSES
    m = r.metrics
    assert m["accuracy"] > 0.8  # chance is 0.1
    assert 0 < m["nll"] < 1.0 and 0 < m["brier"] < 0.4 and 0 <= m["ece"] < 0.3
    assert 0.5 < m["auroc"] <= 1 and 0.5 < m["auroc_ood"] <= 1
    assert m["temperature"] > 0 and m["nll_ts"] > 0 and 0 <= m["ece_ts"] < 0.3
    # every metric agrees with sklearn applied to the returned mean predictive
    probs, labels = r.probs.numpy(), y.numpy()
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(-1)))
    assert m["nll"] == pytest.approx(log_loss(labels, probs, labels=list(range(10))), rel=1e-6)
    correct = probs.argmax(-1) == labels
    assert m["auroc"] == pytest.approx(roc_auc_score(correct, probs.max(-1)))
    in_and_out = torch.cat([r.probs.max(-1).values, r.ood_probs.max(-1).values]).numpy()
    is_in = [1] * len(x) + [0] * len(digits["ood"])
    assert m["auroc_ood"] == pytest.approx(roc_auc_score(is_in, in_and_out))


def test_mean_predictive_matches_per_draw_log_likelihood(normal_result):
    r = normal_result
    # log p(y|x) of the mean predictive = logmeanexp over draws of the per-draw log-likelihood
    from_draws = torch.logsumexp(r.log_likelihood.double(), 0) - torch.log(torch.tensor(32.0))
    from_probs = r.probs.gather(-1, r.labels.unsqueeze(-1)).squeeze(-1).log()
    # eps-derived: float32 log-probs (|log p| < ~10) renormalised over 10 classes and 32 draws,
    # float32 eps times ~100
    tol = 100 * EPS32
    torch.testing.assert_close(from_draws, from_probs.double(), atol=tol, rtol=tol)
    # the per-draw accuracies vary: the draws really are different
    assert r.draw_accuracy.std() > 0


def test_chunked_evaluation_matches_one_batch(digits, normal_fit):
    model, guide = normal_fit
    kwargs = dict(num_samples=8, x_val=digits["val"][0], y_val=digits["val"][1])
    pyro.set_rng_seed(7)
    big = evaluate(model, guide, *digits["test"], batch_size=1024, **kwargs)
    pyro.set_rng_seed(7)
    small = evaluate(model, guide, *digits["test"], batch_size=100, **kwargs)
    # eps-derived: other chunks may take another float32 matmul blocking, a few eps per logit;
    # float32 eps times ~100 relative (~10 absolute on probabilities, ~100 on log-probabilities)
    for key, value in big.metrics.items():
        assert small.metrics[key] == pytest.approx(value, rel=100 * EPS32, abs=1e-7), key
    torch.testing.assert_close(small.probs, big.probs, rtol=100 * EPS32, atol=10 * EPS32)
    torch.testing.assert_close(
        small.log_likelihood, big.log_likelihood, rtol=100 * EPS32, atol=100 * EPS32
    )
    assert (small.predictive_samples == big.predictive_samples).float().mean() > 0.99
    pyro.set_rng_seed(8)
    other = evaluate(model, guide, *digits["test"], batch_size=1024, **kwargs)
    assert not torch.allclose(other.log_likelihood, big.log_likelihood)


def test_autodelta_uses_exactly_one_draw(digits, delta_fit):
    model, guide = delta_fit
    x, y = digits["test"]
    result = evaluate(model, guide, x, y, num_samples=32)
    assert result.num_draws == 1
    assert result.metrics["accuracy"] > 0.8
    # one draw: its log-likelihood is the log of the mean predictive at the label
    picked = result.probs.gather(-1, y.unsqueeze(-1)).squeeze(-1).log()
    # eps-derived: float32 log-probs against the log of their renormalised float64 exps
    tol = 100 * EPS32
    torch.testing.assert_close(result.log_likelihood[0].double(), picked, atol=tol, rtol=tol)
    # the point estimate is deterministic: no seed needed; chunks of 50 may take another
    # float32 matmul blocking, so float32 eps times ~100 (the float64 default would not hold)
    again = evaluate(model, guide, x, y, batch_size=50)
    torch.testing.assert_close(again.probs, result.probs, rtol=100 * EPS32, atol=10 * EPS32)


def test_temperature_is_fitted_on_validation_only(digits, delta_fit):
    from pyro_otmdr.evaluation import metrics

    model, guide = delta_fit
    x_val, y_val = digits["val"]
    result = evaluate(model, guide, *digits["test"], x_val=x_val, y_val=y_val)
    val_probs = evaluate(model, guide, x_val, y_val).probs
    expected = metrics.fit_temperature(val_probs.log(), y_val)
    # the same probabilities (same chunks) and the same float64 L-BFGS: equal up to rounding
    assert result.metrics["temperature"] == pytest.approx(expected, rel=1e-6)
    scaled = metrics.apply_temperature(result.probs.log(), expected)
    assert result.metrics["nll_ts"] == pytest.approx(metrics.nll(scaled, result.labels).item())
    assert set(result.metrics) >= {"temperature", "nll_ts", "brier_ts", "ece_ts"}
    assert "temperature" not in evaluate(model, guide, *digits["test"]).metrics


class FakeEnsemble:
    """An ensemble guide stand-in: member m is the AutoDelta point estimate, perturbed."""

    def __init__(self, base_values, num_members=3):
        self.num_members = num_members
        self.calls = []
        generator = torch.Generator().manual_seed(0)
        self.members = [
            {
                k: v + 0.3 * m * torch.randn(v.shape, generator=generator)
                for k, v in base_values.items()
            }
            for m in range(num_members)
        ]

    def member_values(self, m, x):
        self.calls.append(m)
        return self.members[m]

    def __call__(self, x, y=None):  # pragma: no cover - never called by evaluate
        raise AssertionError("evaluate must use member_values for an ensemble")


def test_ensemble_uses_each_member_once(digits, delta_fit):
    model, delta = delta_fit
    x, y = digits["test"]
    with torch.no_grad():
        ensemble = FakeEnsemble({k: v.detach() for k, v in delta(x[:2]).items()})
    result = evaluate(model, ensemble, x, y, num_samples=17, batch_size=100)
    assert sorted(ensemble.calls) == [0, 1, 2]
    assert result.num_draws == 3
    # independent computation of the mean of the members' predictive probabilities
    expected = torch.zeros(len(x), NUM_CLASSES, dtype=torch.float64)
    with torch.no_grad():
        for values in ensemble.members:
            trace = poutine.trace(poutine.condition(model, data=values)).get_trace(x)
            expected += torch.softmax(trace.nodes["obs"]["fn"].logits, -1).double() / 3
    # eps-derived: float32 forward passes in chunks of 100 against one of 397, softmax against
    # exp(log-softmax), a mean of 3: float32 eps times ~32
    torch.testing.assert_close(result.probs, expected, atol=32 * EPS32, rtol=32 * EPS32)
    assert len(set(result.draw_accuracy.tolist())) == 3


def _wrapped_model(wrap):
    """A linear softmax model whose observed site is wrapped by ``wrap``."""

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(4, 3), 1.0).to_event(2))
        logits = x @ w
        if wrap == "independent":
            return pyro.sample("obs", dist.Categorical(logits=logits).to_event(1), obs=y)
        with pyro.plate("data", x.shape[0]):
            d = dist.Categorical(logits=logits)
            if wrap == "mask":
                d = d.mask(torch.ones(x.shape[0], dtype=torch.bool))
            if wrap == "probs":
                d = dist.Categorical(probs=torch.softmax(logits, -1))
            if wrap == "normal":
                d = dist.Normal(logits.sum(-1), 1.0)
            return pyro.sample("obs", d, obs=y)

    return model


def _point_guide(x, y=None):
    w = pyro.param("point_w", lambda: torch.randn(4, 3, generator=torch.Generator().manual_seed(3)))
    pyro.sample("w", dist.Delta(w, event_dim=2))


@pytest.mark.usefixtures("float64")  # probs=softmax(logits) against logits: compared in float64
@pytest.mark.parametrize("wrap", ["mask", "independent", "probs"])
def test_wrapped_categorical_sites_are_unwrapped(wrap):
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(1))
    with pyro.get_param_store().scope():
        plain = evaluate(_wrapped_model("plain"), _point_guide, x, y, num_samples=2)
        wrapped = evaluate(_wrapped_model(wrap), _point_guide, x, y, num_samples=2)
    torch.testing.assert_close(wrapped.probs, plain.probs)
    torch.testing.assert_close(wrapped.log_likelihood, plain.log_likelihood)


# ----------------------------------------------------------------------------------------------
# ArviZ and plots
# ----------------------------------------------------------------------------------------------


def test_datatree_runs_arviz_diagnostics(normal_result):
    tree = normal_result.to_datatree()
    n = len(normal_result.labels)
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data"):
        assert group in tree.children
    assert dict(tree["log_likelihood"]["obs"].sizes) == {"chain": 1, "draw": 32, "obs_id": n}
    assert dict(tree["posterior_predictive"]["obs"].sizes) == {"chain": 1, "draw": 32, "obs_id": n}
    assert tree["observed_data"]["obs"].values.tolist() == normal_result.labels.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings are expected for a small BNN
        loo = az.loo(tree)
    assert loo.elpd < 0 and loo.n_samples == 32 and loo.n_data_points == n
    ess = az.ess(tree)
    assert float(ess["accuracy"]) > 0 and float(ess["nll"]) > 0
    ess_pp = az.ess(tree, group="posterior_predictive")
    assert ess_pp["obs"].shape == (n,)
    summary = az.summary(tree)
    assert {"accuracy", "nll"} <= set(summary.index)
    assert summary.loc["accuracy", "mean"] == pytest.approx(
        float(normal_result.draw_accuracy.mean()), abs=0.01
    )
    # R-hat compares chains: nan with one chain, finite once the draws are split in two
    rhat = az.rhat(tree)
    assert bool(rhat["accuracy"].isnull())
    rhat2 = az.rhat(normal_result.to_datatree(num_chains=2))
    assert 0.8 < float(rhat2["accuracy"]) < 1.3
    with pytest.raises(ValueError, match="num_chains"):
        normal_result.to_datatree(num_chains=5)


def test_plot_calibration_writes_two_real_pngs(normal_result, tmp_path):
    paths = normal_result.plot_calibration(tmp_path / "figs" / "calibration.png")
    assert [p.name for p in paths] == ["calibration.png", "calibration_pava.png"]
    for path in paths:
        assert path.exists()
        assert 5_000 < path.stat().st_size < 200_000
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert float(image[..., :3].var()) > 0.005  # not a blank or single-colour image
    with pytest.raises(ValueError, match=r"\.png"):
        normal_result.plot_calibration(tmp_path / "calibration.pdf")


# ----------------------------------------------------------------------------------------------
# validation and side effects
# ----------------------------------------------------------------------------------------------


def _bad_calls(digits, model, guide):
    x, y = digits["test"]
    normal = lambda x, y=None: pyro.sample("obs", dist.Normal(x.sum(-1), 1.0), obs=y)  # noqa: E731
    return {
        "negative label": (lambda: evaluate(model, guide, x, y - 1), "must be >= 0"),
        "label too large": (lambda: evaluate(model, guide, x, y + 1), "number of classes"),
        "length mismatch": (lambda: evaluate(model, guide, x, y[:-1]), "labels have"),
        "missing site": (lambda: evaluate(model, guide, x, y, site="label"), "no sample site"),
        "not categorical": (
            lambda: evaluate(normal, lambda x, y=None: None, x, y, num_samples=1),
            "Categorical",
        ),
        "num_samples": (lambda: evaluate(model, guide, x, y, num_samples=0), "num_samples"),
        "x_val alone": (lambda: evaluate(model, guide, x, y, x_val=x), "x_val and y_val"),
        "y_val alone": (lambda: evaluate(model, guide, x, y, y_val=y), "x_val and y_val"),
        "val labels": (
            lambda: evaluate(model, guide, x, y, x_val=x, y_val=y + 1),
            "number of classes",
        ),
        "float labels": (lambda: evaluate(model, guide, x, y.float()), "integers"),
        "batch_size": (lambda: evaluate(model, guide, x, y, batch_size=0), "batch_size"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "negative label",
        "label too large",
        "length mismatch",
        "missing site",
        "not categorical",
        "num_samples",
        "x_val alone",
        "y_val alone",
        "val labels",
        "float labels",
        "batch_size",
    ],
)
def test_bad_input_raises(case, digits, normal_fit):
    call, message = _bad_calls(digits, *normal_fit)[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_parameters_are_unchanged(digits, normal_fit):
    model, guide = normal_fit
    x, y = digits["test"]
    guide(x[:2])  # make sure the guide's parameters are registered in the param store
    store = pyro.get_param_store()
    before = {name: p.detach().clone() for name, p in store.named_parameters()}
    module_before = {name: p.detach().clone() for name, p in guide.named_parameters()}
    assert before and module_before
    x_val, y_val = digits["val"]
    evaluate(model, guide, x, y, num_samples=4, x_val=x_val, y_val=y_val, x_ood=digits["ood"])
    after = dict(store.named_parameters())
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name].detach(), value), name
    for name, p in guide.named_parameters():
        assert torch.equal(p.detach(), module_before[name]), name


def test_rng_state_advances_only_by_the_base_seed(digits, delta_fit):
    model, guide = delta_fit
    pyro.set_rng_seed(11)
    evaluate(model, guide, *digits["test"])
    after_eval = torch.rand(3)
    pyro.set_rng_seed(11)
    torch.randint(0, 2**62, ())
    torch.testing.assert_close(after_eval, torch.rand(3))


# ----------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------


def _copy_to(device, guide_cls, trained, digits, **guide_kwargs):
    """A fresh model and guide on ``device`` holding the trained guide's parameters."""
    x, y = (t[:2].to(device) for t in digits["test"])
    model = DigitsBNN(len(digits["train"][0]), device=device)
    guide = guide_cls(model, **guide_kwargs)
    guide(x, y)  # create the parameters on `device`
    source = dict(trained.named_parameters())
    with torch.no_grad():
        for name, param in guide.named_parameters():
            param.copy_(source[name])
    return model, guide


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, _CUDA])])
def test_device_copy_matches_cpu(device, digits, delta_fit, normal_fit):
    """The cpu case checks this comparison itself; the cuda case runs everything on the GPU."""
    x, y = digits["test"]
    x_val, y_val = digits["val"]
    reference = evaluate(*delta_fit, x, y, x_val=x_val, y_val=y_val)
    with pyro.get_param_store().scope():
        model, guide = _copy_to(device, AutoDelta, delta_fit[1], digits)
        assert next(guide.parameters()).device.type == device
        moved = evaluate(model, guide, x, y, x_val=x_val, y_val=y_val)  # device from the guide
    assert moved.probs.device.type == "cpu" and moved.log_likelihood.device.type == "cpu"
    # on the CPU the same ops (equal); on a GPU other float32 kernels: a GPU-sized bound,
    # float32 eps times ~80 absolute and ~800 relative
    torch.testing.assert_close(moved.probs, reference.probs, atol=1e-5, rtol=1e-4)
    for key, value in reference.metrics.items():
        assert moved.metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    # a sampling guide: other random numbers on another device, statistically the same answer
    pyro.set_rng_seed(0)
    reference = evaluate(*normal_fit, x, y, num_samples=64)
    with pyro.get_param_store().scope():
        model, guide = _copy_to(device, AutoNormal, normal_fit[1], digits)
        pyro.set_rng_seed(0)
        moved = evaluate(model, guide, x, y, num_samples=64, device=device)
    assert moved.metrics["accuracy"] == pytest.approx(reference.metrics["accuracy"], abs=0.03)
    assert moved.metrics["nll"] == pytest.approx(reference.metrics["nll"], rel=0.1)


def test_the_reliability_diagram_counts_the_points_of_each_bin(normal_result):
    from pyro_otmdr.evaluation import metrics
    from pyro_otmdr.evaluation.plots import reliability_figure

    r = normal_result
    fig = reliability_figure(r.probs, r.labels, r.num_bins)
    diagram, histogram = fig.axes
    heights = [patch.get_height() for patch in histogram.patches]
    _, _, count = metrics.calibration_bins(r.probs.double(), r.labels, r.num_bins)
    assert heights == count.tolist() and sum(heights) == len(r.labels)
    assert histogram.get_ylabel() == "points" and "ECE" in diagram.get_title()
