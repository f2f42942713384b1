"""pyro_otmdr.bayes.bnn for regression: bayesian(..., likelihood="normal" | "studentt"), the
learned noise scale, heteroscedastic nets, bad arguments, and training on diabetes."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from torch import nn

from pyro_otmdr import OTMDR
from pyro_otmdr.bayes.bnn import (
    HETEROSCEDASTIC_MIN_SCALE,
    BayesianClassifier,
    BayesianRegressor,
    bayesian,
)
from pyro_otmdr.evaluation import evaluate
from pyro_otmdr.workflow.data import load_diabetes_split
from pyro_otmdr.workflow.models import build_model
from pyro_otmdr.workflow.training import fit


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def _trace(model, x, y):
    trace = poutine.trace(model).get_trace(x, y)
    trace.compute_log_prob()
    return trace


def test_homoscedastic_normal_observes_targets_with_a_learned_sigma():
    model = bayesian(nn.Linear(3, 1), num_data=40, likelihood="normal", noise_prior_scale=2.0)
    assert isinstance(model, BayesianRegressor) and isinstance(model, BayesianClassifier)
    assert model.random_sites == ["net.weight", "net.bias", "sigma"]
    x, y = torch.randn(8, 3), torch.randn(8)
    trace = _trace(model, x, y)
    sigma_site = trace.nodes["sigma"]
    assert isinstance(sigma_site["fn"], dist.HalfNormal) and float(sigma_site["fn"].scale) == 2.0
    obs = trace.nodes["obs"]
    assert isinstance(obs["fn"], dist.Normal) and obs["is_observed"]
    weight, bias, sigma = (trace.nodes[n]["value"] for n in ("net.weight", "net.bias", "sigma"))
    mean = x @ weight.T.squeeze(-1) + bias
    assert torch.allclose(obs["fn"].loc, mean) and torch.equal(obs["fn"].scale, sigma.expand(8))
    # the data plate scales a minibatch's log-likelihood to the training set: N / B = 5
    expected = 5 * dist.Normal(mean, sigma).log_prob(y).sum()
    assert obs["scale"] == 5 and torch.allclose(obs["log_prob_sum"], expected)
    assert model.initial_values()["sigma"] == 2.0  # sigma starts at its prior's scale
    assert model(x).shape == (8,)  # the mean


def test_heteroscedastic_nets_give_a_scale_per_example_and_no_sigma():
    model = bayesian(nn.Linear(3, 2), num_data=8, likelihood="normal", heteroscedastic=True)
    x, y = torch.randn(8, 3), torch.randn(8)
    trace = _trace(model, x, y)
    assert "sigma" not in trace.nodes and model.random_sites == ["net.weight", "net.bias"]
    raw = x @ trace.nodes["net.weight"]["value"].T + trace.nodes["net.bias"]["value"]
    scale = torch.nn.functional.softplus(raw[:, 1]) + HETEROSCEDASTIC_MIN_SCALE
    assert torch.allclose(trace.nodes["obs"]["fn"].loc, raw[:, 0])
    assert torch.allclose(trace.nodes["obs"]["fn"].scale, scale)
    assert "sigma" not in model.initial_values()


def test_studentt_with_fixed_df():
    model = bayesian(nn.Linear(3, 1), num_data=8, likelihood="studentt", df=3.0)
    obs = _trace(model, torch.randn(8, 3), torch.randn(8)).nodes["obs"]
    assert isinstance(obs["fn"], dist.StudentT) and bool((obs["fn"].df == 3.0).all())
    default = bayesian(nn.Linear(3, 1), num_data=8, likelihood="studentt")
    assert float(default.df) == 4.0
    assert default.double().df.dtype == torch.float64  # buffers follow the model


def test_the_classifier_is_unchanged_by_default():
    model = bayesian(nn.Linear(3, 4), num_data=8)
    assert type(model) is BayesianClassifier and "sigma" not in model.initial_values()
    assert isinstance(_trace(model, torch.randn(2, 3), torch.tensor([0, 3])).nodes["obs"]["fn"],
                      dist.Categorical)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"likelihood": "poisson"}, "categorical, normal, studentt"),
        ({"heteroscedastic": True}, "is for regression"),
        ({"likelihood": "normal", "df": 3.0}, "degrees of freedom"),
        ({"likelihood": "studentt", "df": 0.0}, "df must be a positive"),
        ({"likelihood": "normal", "noise_prior_scale": 0.0}, "noise_prior_scale"),
        ({"likelihood": "normal", "heteroscedastic": 1}, "must be a bool"),
    ],
)
def test_bad_likelihood_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bayesian(nn.Linear(3, 1), num_data=8, **kwargs)


def test_outputs_and_targets_of_the_wrong_shape_or_type():
    x = torch.randn(4, 3)
    two = bayesian(nn.Linear(3, 2), num_data=8, likelihood="normal")
    with pytest.raises(ValueError, match="needs heteroscedastic=True"):
        two(x)
    one = bayesian(nn.Linear(3, 1), num_data=8, likelihood="normal", heteroscedastic=True)
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        one(x)
    model = bayesian(nn.Linear(3, 1), num_data=8, likelihood="normal")
    with pytest.raises(ValueError, match="one target per input"):
        model(x, torch.randn(4, 1))
    with pytest.raises(ValueError, match="floating point"):
        model(x, torch.arange(4))


def test_predictive_samples_targets():
    model = bayesian(nn.Linear(3, 1), num_data=8, likelihood="normal")
    guide = AutoNormal(model)
    x, y = torch.randn(8, 3), torch.randn(8)
    SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(x, y)
    draws = Predictive(model, guide=guide, num_samples=5, return_sites=["obs", "sigma"])(x)
    assert draws["obs"].shape == (5, 8) and draws["obs"].dtype == torch.float32
    assert (draws["sigma"] > 0).all()


# ------------------------------------------------------------- training on diabetes


@pytest.fixture(scope="module")
def diabetes():
    splits = load_diabetes_split(seed=0)
    return splits.train.tensors, splits.test.tensors


@pytest.mark.parametrize("guide_name", ["normal", "delta"])
@pytest.mark.parametrize("method", ["svi", "otmdr"])
def test_regression_bnn_trains_on_diabetes(diabetes, guide_name, method):
    (x, y), (x_test, y_test) = diabetes
    net = build_model("mlp", 1, in_features=x.shape[1], hidden=(16,))
    model = bayesian(net, num_data=len(x), likelihood="normal")
    init = init_to_value(values=model.initial_values())
    if guide_name == "normal":
        guide, rho = AutoNormal(model, init_loc_fn=init, init_scale=1e-3), 0.005
    else:
        guide, rho = AutoDelta(model, init_loc_fn=init), 0.05
    loss = Trace_ELBO() if method == "svi" else OTMDR(Trace_ELBO(), rho=rho)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss=loss)
    losses = fit(svi, x, y, epochs=15, batch_size=64, seed=0)
    assert losses[-1] < 0.9 * losses[0]
    model.eval()
    result = evaluate(model, guide, x_test, y_test, num_samples=16)
    baseline = float((y_test - y.mean()).square().mean().sqrt())  # predict the training mean
    assert 0.8 < baseline < 1.1  # standardised targets
    assert result.metrics["rmse"] < 0.9 * baseline
    assert result.metrics["coverage_90"] > 0.7 and math.isfinite(result.metrics["crps"])
    assert float(guide.median()["sigma"]) < 1.0  # the noise scale was learned from 1
