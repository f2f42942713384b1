"""Tests of pyro_otmdr.bayes.bnn: priors, likelihood scaling, norms, guides, SVI."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from pyro.nn import PyroModule
from torch import nn

from pyro_otmdr.bayes.bnn import BayesianClassifier, bayesian, is_norm_layer
from pyro_otmdr.workflow.data import load_digits_split
from pyro_otmdr.workflow.models import build_model
from tests.conftest import EPS32


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def _mlp() -> nn.Module:
    return build_model("mlp", 10, in_features=64, hidden=(16,))


def _cnn() -> nn.Module:
    return build_model("cnn", 10, in_channels=1, channels=(4, 8))


def _resnet() -> nn.Module:
    return build_model("resnet10", 10, in_channels=3, width=4)


NETS = {
    "mlp": (_mlp, (64,)),
    "cnn": (_cnn, (1, 8, 8)),
    "resnet": (_resnet, (3, 16, 16)),
}


def _batch(shape, n=4):
    return torch.randn(n, *shape), torch.randint(0, 10, (n,))


def _trace(model, x, y):
    trace = poutine.trace(model).get_trace(x, y)
    trace.compute_log_prob()
    return trace


# ------------------------------------------------------------- structure


def test_sites_are_named_after_parameters_with_priors():
    net = _cnn()
    model = bayesian(net, num_data=100, prior_scale=0.5)
    x, y = _batch((1, 8, 8))
    trace = _trace(model, x, y)
    expected_random = [
        "net." + n for n, m in net.named_parameters() if not n.startswith("features.1.")
    ]
    expected_random = [n for n in expected_random if not n.startswith("net.features.5.")]
    assert model.random_sites == expected_random
    assert model.point_params == [
        "net.features.1.weight",
        "net.features.1.bias",
        "net.features.5.weight",
        "net.features.5.bias",
    ]
    params = dict(net.named_parameters())
    for name in model.random_sites:
        site = trace.nodes[name]
        assert site["type"] == "sample" and not site["is_observed"]
        shape = params[name.removeprefix("net.")].shape
        assert site["value"].shape == shape
        assert site["fn"].event_dim == len(shape)
        assert site["fn"].batch_shape == ()
        base = site["fn"].base_dist
        assert isinstance(base, dist.Normal)
        assert torch.all(base.loc == 0) and torch.all(base.scale == 0.5)
    for name in model.point_params:
        assert trace.nodes[name]["type"] == "param"


def test_obs_site_is_categorical_and_scaled_to_num_data():
    model = bayesian(_mlp(), num_data=100)
    for n in (4, 2):  # a batch and a half batch are each scaled on their own
        x, y = _batch((64,), n)
        trace = _trace(model, x, y)
        obs = trace.nodes["obs"]
        assert obs["is_observed"] and torch.equal(obs["value"], y)
        assert isinstance(obs["fn"], dist.Categorical)
        assert obs["scale"] == pytest.approx(100 / n)
        logits = trace.nodes["_RETURN"]["value"]
        expected = dist.Categorical(logits=logits).log_prob(y).sum() * 100 / n  # scaled
        # eps-derived: float32, Pyro scales each term before the sum of <= 4, the test after
        assert obs["log_prob_sum"] == pytest.approx(expected.item(), rel=16 * EPS32)


def test_batch_larger_than_num_data_is_not_rescaled():
    model = bayesian(_mlp(), num_data=3)
    x, y = _batch((64,), 8)
    assert _trace(model, x, y).nodes["obs"]["scale"] == 1.0


def test_returns_logits_and_samples_labels_without_y():
    model = bayesian(_mlp(), num_data=10)
    x, _ = _batch((64,))
    trace = _trace(model, x, None)
    assert trace.nodes["_RETURN"]["value"].shape == (4, 10)
    assert not trace.nodes["obs"]["is_observed"]
    assert trace.nodes["obs"]["value"].shape == (4,)


def test_weights_are_drawn_once_per_call():
    model = bayesian(_mlp(), num_data=10)
    x, _ = _batch((64,))
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
        trace = poutine.trace(model).get_trace(x)
        assert torch.allclose(
            poutine.replay(model, trace=trace)(x), trace.nodes["_RETURN"]["value"]
        )


def test_copy_by_default_and_inplace_on_request():
    net = _cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = bayesian(net, num_data=10)
    assert type(net) is not type(model.net) and not isinstance(net, PyroModule)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    same = bayesian(net, num_data=10, inplace=True)
    assert same.net is net and isinstance(net, PyroModule)
    assert "features.0.weight" not in dict(net.named_parameters())


def test_custom_filter_picks_random_parameters():
    model = bayesian(_mlp(), num_data=10, filter=lambda name, module: name.startswith("2."))
    assert model.random_sites == ["net.2.weight", "net.2.bias"]
    assert model.point_params == ["net.0.weight", "net.0.bias"]


def test_norm_layers_detected():
    for layer in (nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.LayerNorm(3), nn.GroupNorm(1, 3)):
        assert is_norm_layer(layer)
    assert is_norm_layer(nn.InstanceNorm2d(3, affine=True))
    assert not is_norm_layer(nn.Linear(3, 3))


def test_layernorm_and_groupnorm_stay_deterministic():
    net = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.GroupNorm(2, 6))
    model = bayesian(net, num_data=10)
    assert model.point_params == ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
    assert model.random_sites == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def test_initial_values_are_the_network_weights():
    net = _mlp()
    model = bayesian(net, num_data=10)
    values = model.initial_values()
    assert set(values) == set(model.random_sites)
    for name, param in net.named_parameters():
        assert torch.equal(values["net." + name], param.detach())
    values["net.0.weight"].add_(1.0)  # a clone: the stored copy does not move
    assert torch.equal(model.initial_values()["net.0.weight"], net[0].weight.detach())
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=model.initial_values()))
    guide(*_batch((64,)))
    loc = pyro.get_param_store()["AutoNormal.locs.net.0.weight"]
    assert torch.equal(loc.detach(), net[0].weight.detach())


def test_prior_follows_dtype():
    model = bayesian(_mlp(), num_data=10).double()
    x, y = _batch((64,))
    trace = _trace(model, x.double(), y)
    assert trace.nodes["net.0.weight"]["value"].dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_data=0), "num_data"),
        (dict(num_data=2.5), "num_data"),
        (dict(num_data=10, prior_scale=0.0), "prior_scale"),
        (dict(num_data=10, filter="weights"), "filter"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bayesian(_mlp(), **kwargs)


def test_rejects_non_modules_tied_weights_and_bayesian_nets():
    with pytest.raises(ValueError, match=r"torch\.nn\.Module"):
        bayesian(lambda x: x, num_data=10)
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="tied"):
        bayesian(tied, num_data=10)
    model = bayesian(_mlp(), num_data=10)
    with pytest.raises(ValueError, match="PyroSample"):
        bayesian(model.net, num_data=10)


def test_bad_label_shape():
    model = bayesian(_mlp(), num_data=10)
    with pytest.raises(ValueError, match="one label per input"):
        model(torch.randn(4, 64), torch.zeros(3, dtype=torch.long))


def test_warns_when_param_store_holds_the_names():
    model = bayesian(_cnn(), num_data=10)
    model(*_batch((1, 8, 8)))  # registers net.features.1.weight, ... in the param store
    with pytest.warns(UserWarning, match="clear_param_store"):
        bayesian(_cnn(), num_data=10)


# ------------------------------------------------------------- batch norm, train/eval


def test_batchnorm_running_stats_update_in_train_mode_only():
    model = bayesian(_cnn(), num_data=10)
    bn = model.net.features[1]
    x, y = _batch((1, 8, 8))
    model.train()
    model(x, y)
    assert bn.num_batches_tracked.item() == 1
    assert bn.running_mean.abs().sum() > 0
    mean = bn.running_mean.clone()
    model.eval()
    assert not bn.training
    model(x, y)
    assert bn.num_batches_tracked.item() == 1 and torch.equal(bn.running_mean, mean)
    model.train()
    assert bn.training


# ------------------------------------------------------------- inference


def _svi_steps(model, guide, x, y, elbo=None, steps=3):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo or Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(steps)]
    assert all(torch.isfinite(torch.tensor(losses)))
    return losses


@pytest.mark.parametrize("guide_cls", [AutoNormal, AutoDelta])
@pytest.mark.parametrize("net_name", list(NETS))
def test_svi_steps(net_name, guide_cls):
    make_net, shape = NETS[net_name]
    model = bayesian(make_net(), num_data=50, prior_scale=0.3)
    guide = guide_cls(model, init_loc_fn=init_to_value(values=model.initial_values()))
    x, y = _batch(shape)
    guide(x, y)  # set up the guide's parameters before the first step
    store = pyro.get_param_store()
    before = {name: store[name].detach().clone() for name in store}
    _svi_steps(model, guide, x, y)
    guide_names = [name for name in before if not name.startswith("net.")]
    for site in model.random_sites:
        assert any(name.endswith("." + site) for name in guide_names)
    for name, value in before.items():
        assert not torch.equal(store[name].detach(), value), f"{name} was not fitted"
    assert set(model.point_params) <= set(before)  # norm-layer parameters are fitted too
    bns = [m for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.num_batches_tracked.item() == 4 for bn in bns)  # guide setup + 3 steps


def test_mean_field_elbo_and_predictive():
    model = bayesian(_mlp(), num_data=50)
    guide = AutoNormal(model)
    x, y = _batch((64,))
    _svi_steps(model, guide, x, y, elbo=TraceMeanField_ELBO(), steps=2)
    model.eval()
    draws = Predictive(model, guide=guide, num_samples=5, return_sites=["obs", "_RETURN"])(x)
    assert draws["obs"].shape == (5, 4)
    assert draws["_RETURN"].shape == (5, 4, 10)


def test_elbo_module_route_with_torch_optimizer():
    x, y = _batch((1, 8, 8))
    # module-local params must be switched on before the model and guide are built
    with pyro.settings.context(module_local_params=True):
        model = bayesian(_cnn(), num_data=50)
        guide = AutoNormal(model)
        elbo = Trace_ELBO()(model, guide)
        elbo(x, y)  # creates the guide's parameters
        names = {name for name, _ in elbo.named_parameters()}
        assert "model.net.features.1.weight" in names
        optim = torch.optim.Adam(elbo.parameters(), lr=0.01)
        bn_weight = model.net.features[1].weight.detach().clone()
        for _ in range(2):
            optim.zero_grad()
            loss = elbo(x, y)
            loss.backward()
            optim.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.net.features[1].weight.detach(), bn_weight)


def test_autonormal_learns_digits():
    splits = load_digits_split(seed=0)
    x, y = splits.train.tensors
    x_test, y_test = splits.test.tensors
    model = bayesian(build_model("mlp", 10, in_features=64, hidden=(32,)), num_data=len(x))
    assert isinstance(model, BayesianClassifier)
    guide = AutoNormal(
        model, init_loc_fn=init_to_value(values=model.initial_values()), init_scale=1e-3
    )
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    for _ in range(60):
        svi.step(x, y)
    probs = Predictive(model, guide=guide, num_samples=8, return_sites=["_RETURN"])(x_test)
    accuracy = (probs["_RETURN"].softmax(-1).mean(0).argmax(-1) == y_test).float().mean()
    assert accuracy > 0.85


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_moves_to_cuda_with_its_prior():
    model = bayesian(_cnn(), num_data=50).cuda()
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=model.initial_values()))
    x, y = (t.cuda() for t in _batch((1, 8, 8)))
    trace = _trace(model, x, y)
    assert trace.nodes["net.features.0.weight"]["fn"].base_dist.scale.is_cuda
    _svi_steps(model, guide, x, y)
    assert pyro.get_param_store()["AutoNormal.locs.net.features.0.weight"].is_cuda


def test_input_transform_runs_in_front_of_the_network_and_must_be_parameter_free():
    class Shift(nn.Module):
        def forward(self, x):
            return x - 1.0

    net = nn.Linear(3, 2)
    model = bayesian(net, num_data=4, input_transform=Shift())
    x = torch.randn(4, 3)
    latents = {name: param.detach() for name, param in net.named_parameters()}
    conditioned = poutine.condition(model, data={"net." + k: v for k, v in latents.items()})
    assert torch.allclose(conditioned(x), net(x - 1.0))
    assert model.random_sites == ["net.weight", "net.bias"]  # names unchanged
    with pytest.raises(ValueError, match="without parameters"):
        bayesian(net, num_data=4, input_transform=nn.Linear(3, 3))
