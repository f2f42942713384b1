"""Turn an ordinary ``torch.nn.Module`` classifier or regressor into a Bayesian Pyro model.

:func:`bayesian` converts a network that maps inputs to logits (or, with
``likelihood="normal"``/``"studentt"``, to regression outputs) into a
:class:`~pyro.nn.PyroModule` ``model(x, y=None)`` that

* puts an isotropic ``Normal(0, prior_scale)`` prior on the weights, one
  :class:`~pyro.nn.PyroSample` site per tensor, named after the parameter
  (``"net.0.weight"``, ``"net.layer1.0.conv1.weight"``, ...);
* keeps normalisation layers (BatchNorm, LayerNorm, GroupNorm, ...)
  deterministic: their affine parameters stay ordinary point parameters (Pyro
  ``param`` sites of the same names) and their running statistics stay buffers;
* observes the labels with ``Categorical(logits=...)`` (or the real targets with
  ``Normal(mean, sigma)`` / ``StudentT(df, mean, sigma)``: :class:`BayesianRegressor`) inside
  ``pyro.plate("data", size=num_data, subsample_size=len(x))``, so that the
  log-likelihood of a minibatch (or of half a minibatch) is scaled to the full
  data set.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from .priors import IsotropicNormal

__all__ = [
    "HETEROSCEDASTIC_MIN_SCALE",
    "LIKELIHOODS",
    "NORM_LAYERS",
    "BayesianClassifier",
    "BayesianRegressor",
    "ParamFilter",
    "bayesian",
    "is_norm_layer",
    "weights_not_norms",
]

#: Module types whose parameters stay deterministic by default.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*, lazy variants
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)

#: The observation models of :func:`bayesian`: ``categorical`` (a classifier: the network gives
#: logits), ``normal`` and ``studentt`` (regression: the network gives the mean, and with
#: ``heteroscedastic=True`` a raw scale too).
LIKELIHOODS: tuple[str, ...] = ("categorical", "normal", "studentt")

#: The smallest noise scale of a heteroscedastic regression model, in the targets' units:
#: ``scale = softplus(raw) + HETEROSCEDASTIC_MIN_SCALE``.
HETEROSCEDASTIC_MIN_SCALE = 1e-3

#: ``filter(name, module) -> bool``: whether the parameter ``name`` (its dotted
#: path inside the network, e.g. ``"layer1.0.conv1.weight"``) of ``module`` (the
#: module that owns it) becomes a random variable.
ParamFilter = Callable[[str, nn.Module], bool]


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (see :data:`NORM_LAYERS`)."""
    return isinstance(module, NORM_LAYERS)


def weights_not_norms(name: str, module: nn.Module) -> bool:
    """The default :data:`ParamFilter`: every parameter except those of normalisation layers."""
    return not is_norm_layer(module)


class _NormalPrior:
    """``Normal(0, root.prior_scale)`` over a tensor of ``shape``, on the root's device.

    A callable (not a fixed distribution) so that the prior follows ``model.to(device)``
    and ``model.double()`` through the root's ``prior_scale`` buffer. It returns an
    :class:`~.priors.IsotropicNormal`, equal to ``Normal(0, scale).expand(shape).to_event(dim)``
    but with a log-density of one fused reduction per tensor.
    """

    def __init__(self, root: BayesianClassifier, shape: torch.Size) -> None:
        self.root = root
        self.shape = torch.Size(shape)
        self._cache: dict[bool, tuple[torch.Tensor, int, IsotropicNormal]] = {}

    def __call__(self, module: nn.Module) -> dist.Distribution:
        """The prior at the root's current ``prior_scale``, built once while that is unchanged.

        The distribution (with its log-density's constants) is reused from pass to pass while the
        buffer is the same tensor at the same version and validation is set the same way; moving,
        casting or writing into the buffer builds it afresh.
        """
        scale = self.root.prior_scale
        if scale.requires_grad or scale.is_inference():
            return IsotropicNormal(scale, self.shape)
        validate = bool(torch.distributions.Distribution._validate_args)
        cached = self._cache.get(validate)
        if cached is not None and cached[0] is scale and cached[1] == scale._version:
            return cached[2]
        prior = IsotropicNormal(scale, self.shape)
        self._cache[validate] = (scale, scale._version, prior)
        return prior

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}


class BayesianClassifier(PyroModule):
    """A Pyro model ``model(x, y=None) -> logits`` around a converted network.

    Build it with :func:`bayesian`. Attributes: ``net`` (the converted network, a
    :class:`~pyro.nn.PyroModule`), ``num_data`` (the size of the full training set,
    used to scale minibatch likelihoods; may be changed), ``prior_scale`` (a 0-d
    buffer), ``random_sites`` (names of the ``PyroSample`` sites) and
    ``point_params`` (names of the parameters that stay point estimates).

    Usage::

        import torch
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 3), num_data=100)
        x, y = torch.randn(8, 4), torch.randint(3, (8,))
        logits = model(x, y)   # samples weights from the prior, observes y
        assert logits.shape == (8, 3)
        assert model.random_sites == ["net.weight", "net.bias"]
    """

    def __init__(
        self,
        net: nn.Module,
        num_data: int,
        prior_scale: float,
        input_transform: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.input_transform = nn.Identity() if input_transform is None else input_transform
        self.net = net
        self.num_data = num_data
        self.register_buffer("prior_scale", torch.tensor(float(prior_scale)), persistent=False)
        self.random_sites: list[str] = []
        self.point_params: list[str] = []
        self._initial_values: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network (weights drawn once per call) and observe ``y``.

        :param x: a batch of inputs, batch dimension first.
        :param y: integer labels of shape ``(len(x),)``, or ``None`` to sample them.
        :returns: the logits, shape ``(len(x), num_classes)``.
        """
        if y is not None and y.shape != x.shape[:1]:
            raise ValueError(
                f"y must hold one label per input: expected shape {tuple(x.shape[:1])}, "
                f"got {tuple(y.shape)}"
            )
        logits = self.net(self.input_transform(x))
        batch = x.shape[0]
        # A batch larger than the training set (say, a whole test set) is not rescaled.
        size = max(self.num_data, batch)
        with pyro.plate("data", size=size, subsample_size=batch, device=x.device):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    def initial_values(self) -> dict[str, torch.Tensor]:
        """The network's weights at conversion time, as ``{site name: tensor}`` (fresh clones).

        Useful to start a guide at the network's own initialisation instead of at
        zero (``AutoNormal``'s default) or at prior draws (``AutoDelta``'s)::

            guide = AutoNormal(model, init_loc_fn=init_to_value(values=model.initial_values()))
        """
        device, dtype = self.prior_scale.device, self.prior_scale.dtype
        return {
            name: value.detach().to(device=device, dtype=dtype).clone()
            for name, value in self._initial_values.items()
        }


def _noise_prior(module: BayesianRegressor) -> dist.Distribution:
    """``HalfNormal(noise_prior_scale)``: the prior of ``sigma``, on the model's device."""
    return dist.HalfNormal(module.noise_prior_scale)


class BayesianRegressor(BayesianClassifier):
    """A Pyro regression model ``model(x, y=None) -> mean`` around a converted network.

    Build it with ``bayesian(net, likelihood="normal", ...)`` (or ``"studentt"``). The targets
    ``y`` (real numbers, shape ``(len(x),)``) are observed at the site ``"obs"`` by
    ``Normal(mean, sigma)`` or ``StudentT(df, mean, sigma)`` inside the same subsampled
    ``pyro.plate("data", ...)`` as :class:`BayesianClassifier`'s labels.

    * Homoscedastic (the default): the network gives the mean, ``(batch,)`` or ``(batch, 1)``;
      the noise scale is one global latent site ``"sigma" ~ HalfNormal(noise_prior_scale)``
      (a ``PyroSample`` of this module, learned by the guide like the weights: ``AutoNormal``
      fits a LogNormal to it, ``AutoDelta`` a point estimate).
    * ``heteroscedastic=True``: the network gives two columns ``(batch, 2)``, the mean and a raw
      scale; the scale of each example is ``softplus(raw) + HETEROSCEDASTIC_MIN_SCALE``, and
      there is no ``sigma`` site.

    Attributes besides those of :class:`BayesianClassifier`: ``likelihood`` (``"normal"`` or
    ``"studentt"``), ``heteroscedastic``, ``df`` (a 0-d buffer, the StudentT degrees of freedom,
    fixed; ``None`` for Normal) and ``noise_prior_scale`` (a 0-d buffer).

    Usage::

        import torch
        from pyro_otmdr.bayes import bayesian

        model = bayesian(torch.nn.Linear(4, 1), num_data=100, likelihood="normal")
        x, y = torch.randn(8, 4), torch.randn(8)
        mean = model(x, y)   # samples weights and sigma from the prior, observes y
        assert mean.shape == (8,)
        assert model.random_sites == ["net.weight", "net.bias", "sigma"]
    """

    def __init__(
        self,
        net: nn.Module,
        num_data: int,
        prior_scale: float,
        input_transform: nn.Module | None = None,
        *,
        likelihood: str = "normal",
        heteroscedastic: bool = False,
        noise_prior_scale: float = 1.0,
        df: float | None = None,
    ) -> None:
        super().__init__(net, num_data, prior_scale, input_transform)
        self.likelihood = likelihood
        self.heteroscedastic = bool(heteroscedastic)
        self.register_buffer(
            "noise_prior_scale", torch.tensor(float(noise_prior_scale)), persistent=False
        )
        self.df: torch.Tensor | None
        if likelihood == "studentt":
            self.register_buffer("df", torch.tensor(float(df)), persistent=False)
        else:
            self.df = None
        if not self.heteroscedastic:
            self.sigma = PyroSample(_noise_prior)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network (weights, and ``sigma``, drawn once per call) and observe ``y``.

        :param x: a batch of inputs, batch dimension first.
        :param y: real targets of shape ``(len(x),)``, or ``None`` to sample them.
        :returns: the predicted mean, shape ``(len(x),)``.
        """
        if y is not None:
            if y.shape != x.shape[:1]:
                raise ValueError(
                    f"y must hold one target per input: expected shape {tuple(x.shape[:1])}, "
                    f"got {tuple(y.shape)}"
                )
            if not y.dtype.is_floating_point:
                raise ValueError(
                    f"regression targets y must be floating point, got dtype {y.dtype}"
                )
        out = self.net(self.input_transform(x))
        loc, scale = self._loc_and_scale(out, x.shape[0])
        if self.likelihood == "studentt":
            noise = dist.StudentT(self.df, loc, scale)
        else:
            noise = dist.Normal(loc, scale)
        batch = x.shape[0]
        size = max(self.num_data, batch)
        with pyro.plate("data", size=size, subsample_size=batch, device=x.device):
            pyro.sample("obs", noise, obs=y)
        return loc

    def _loc_and_scale(self, out: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        columns = 2 if self.heteroscedastic else 1
        if out.shape[:1] != (batch,) or out[0].numel() != columns or out.dim() > 2:
            wanted = (
                "(batch, 2): the mean and a raw scale" if columns == 2 else "(batch,) or (batch, 1)"
            )
            other = (
                "; a net with one output is homoscedastic (heteroscedastic=False)"
                if columns == 2
                else "; a net with two outputs (mean, raw scale) needs heteroscedastic=True"
            )
            raise ValueError(
                f"the regression network must output {wanted}, got shape {tuple(out.shape)}" + other
            )
        out = out.reshape(batch, columns)
        if self.heteroscedastic:
            scale = torch.nn.functional.softplus(out[:, 1]) + HETEROSCEDASTIC_MIN_SCALE
            return out[:, 0], scale
        return out[:, 0], self.sigma.expand(batch)

    def initial_values(self) -> dict[str, torch.Tensor]:
        """The network's weights at conversion time, and for a homoscedastic model ``sigma`` at
        ``noise_prior_scale`` (the scale of standardised targets by default): fresh clones."""
        values = super().initial_values()
        if not self.heteroscedastic:
            values["sigma"] = self.noise_prior_scale.detach().clone()
        return values


def bayesian(
    net: nn.Module,
    *,
    num_data: int,
    prior_scale: float = 1.0,
    filter: ParamFilter | None = None,
    inplace: bool = False,
    input_transform: nn.Module | None = None,
    likelihood: str = "categorical",
    heteroscedastic: bool = False,
    noise_prior_scale: float = 1.0,
    df: float | None = None,
) -> BayesianClassifier:
    """Turn a ``torch.nn.Module`` classifier (it returns logits) into a Bayesian Pyro model,
    or, with ``likelihood="normal"`` or ``"studentt"``, a regression network (it returns the
    mean, and with ``heteroscedastic=True`` a raw scale as well).

    Each parameter selected by ``filter`` (by default every parameter outside
    normalisation layers, see :func:`weights_not_norms`) becomes a
    ``PyroSample(Normal(0, prior_scale).expand(shape).to_event(dim))`` site named
    ``"net." + <its dotted name in net>``. The other parameters (by default the
    affine weights of BatchNorm/LayerNorm/GroupNorm/...) stay ordinary point
    parameters: they appear as Pyro ``param`` sites of the same names and are fitted
    by SVI like the guide's parameters. Buffers (BatchNorm running statistics) are
    left alone, so they keep updating in ``train()`` mode and are used in ``eval()``
    mode.

    The returned model is ``model(x, y=None) -> logits``; the labels are observed
    by ``Categorical(logits=logits)`` in ``pyro.plate("data", size=num_data,
    subsample_size=len(x))``, which scales a minibatch's log-likelihood by
    ``num_data / len(x)``. It works with ``AutoNormal``, ``AutoDelta`` and other
    autoguides, and with ``Trace_ELBO``/``TraceMeanField_ELBO`` SVI.

    Regression (``likelihood="normal"`` or ``"studentt"``, a :class:`BayesianRegressor`): the
    model is ``model(x, y=None) -> mean`` and observes real targets ``y`` of shape ``(len(x),)``
    at the same site ``"obs"``, in the same plate, by ``Normal(mean, sigma)`` or
    ``StudentT(df, mean, sigma)``. Homoscedastic by default: the network outputs the mean
    (``(batch,)`` or ``(batch, 1)``) and the noise scale is a global latent
    ``"sigma" ~ HalfNormal(noise_prior_scale)`` that the guide learns with the weights. With
    ``heteroscedastic=True`` the network outputs two columns, the mean and a raw scale, and
    each example's scale is ``softplus(raw) + HETEROSCEDASTIC_MIN_SCALE``.

    By default ``net`` is deep-copied and the copy converted, so the caller's
    network is untouched (and BatchNorm statistics update in ``model.net``, not in
    ``net``). With ``inplace=True`` the network itself is converted (its class
    becomes a ``PyroModule`` subclass and its random parameters are removed).

    Pyro keeps point parameters in a global param store keyed by name: clear it
    (``pyro.clear_param_store()``) before training a second model with the same
    site names, or the second model's norm parameters are shadowed by the first's.

    :param net: a classifier mapping a batch of inputs to logits ``(batch, classes)``.
    :param num_data: the number of training examples (the full data set, not a batch).
    :param prior_scale: the prior standard deviation of every random weight.
    :param filter: ``filter(name, module) -> bool`` choosing the random parameters.
    :param inplace: convert ``net`` itself instead of a deep copy.
    :param input_transform: a module without parameters applied to the inputs before the
        network, e.g. the data's normalisation (so that the data, and attacks on them, stay in
        their natural box); it is kept as ``model.input_transform`` and its buffers move with
        the model.
    :param likelihood: one of :data:`LIKELIHOODS`: ``"categorical"`` (a classifier, the
        default), ``"normal"`` or ``"studentt"`` (regression).
    :param heteroscedastic: regression only: the network outputs the mean and a raw scale per
        example instead of sharing one learned ``sigma``.
    :param noise_prior_scale: homoscedastic regression only: the scale of the ``HalfNormal``
        prior of ``sigma``, in the targets' units (1 suits standardised targets); ``sigma``
        starts there in :meth:`~BayesianRegressor.initial_values`.
    :param df: ``"studentt"`` only: the degrees of freedom, fixed (default 4).
    :returns: a :class:`BayesianClassifier`, or for regression a :class:`BayesianRegressor`.

    Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.workflow.models import build_model

        x_train, y_train = torch.randn(32, 64), torch.randint(10, (32,))
        pyro.clear_param_store()
        net = build_model("mlp", 10, in_features=64, hidden=(16,))
        model = bayesian(net, num_data=len(x_train))
        guide = AutoNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        for xb, yb in zip(x_train.split(8), y_train.split(8), strict=True):
            loss = svi.step(xb, yb)   # the minibatch's negative ELBO, a float

    A regression BNN, homoscedastic (a learned ``sigma``) and heteroscedastic. Usage::

        import pyro
        import torch
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro_otmdr.bayes import bayesian
        from pyro_otmdr.workflow.models import build_model

        x_train, y_train = torch.randn(32, 10), torch.randn(32)   # real targets, shape (N,)
        net = build_model("mlp", 1, in_features=10, hidden=(16,))
        model = bayesian(net, num_data=len(x_train), likelihood="normal")
        guide = AutoNormal(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        loss = svi.step(x_train, y_train)
        assert "sigma" in guide.median()                           # the learned noise scale
        pyro.clear_param_store()
        two = build_model("mlp", 2, in_features=10, hidden=(16,))  # mean and raw scale
        model = bayesian(two, num_data=len(x_train), likelihood="normal", heteroscedastic=True)
        assert model(x_train).shape == (32,)                       # the mean
    """
    filter = weights_not_norms if filter is None else filter
    _check_arguments(net, num_data, prior_scale, filter)
    _check_likelihood(likelihood, heteroscedastic, noise_prior_scale, df)
    if input_transform is not None and (
        not isinstance(input_transform, nn.Module)
        or any(True for _ in input_transform.parameters())
    ):
        raise ValueError(
            "input_transform must be a torch.nn.Module without parameters (a fixed "
            "normalisation); put trainable layers into net"
        )
    if not inplace:
        net = copy.deepcopy(net)
    selected = _select_params(net, filter)
    to_pyro_module_(net)
    if likelihood == "categorical":
        model = BayesianClassifier(net, int(num_data), prior_scale, input_transform)
    else:
        model = BayesianRegressor(
            net,
            int(num_data),
            prior_scale,
            input_transform,
            likelihood=likelihood,
            heteroscedastic=heteroscedastic,
            noise_prior_scale=noise_prior_scale,
            df=4.0 if df is None else df,
        )
    for name, module, attr, value in selected:
        model._initial_values["net." + name] = value.detach().clone()
        setattr(module, attr, PyroSample(_NormalPrior(model, value.shape)))
    model.random_sites = ["net." + item[0] for item in selected]
    if isinstance(model, BayesianRegressor) and not model.heteroscedastic:
        model.random_sites.append("sigma")
    model.point_params = ["net." + name for name, _ in net.named_parameters()]
    _warn_on_param_store_clash(model.point_params)
    return model


def _check_arguments(net: nn.Module, num_data: int, prior_scale: float, filter: object) -> None:
    if not isinstance(net, nn.Module):
        raise ValueError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if isinstance(num_data, bool) or not isinstance(num_data, numbers.Integral) or num_data < 1:
        raise ValueError(
            f"num_data must be a positive int (the size of the training set), got {num_data!r}"
        )
    if not isinstance(prior_scale, int | float) or not prior_scale > 0:
        raise ValueError(f"prior_scale must be a positive float, got {prior_scale!r}")
    if not callable(filter):
        raise ValueError("filter must be a callable filter(name, module) -> bool")
    for module in net.modules():
        if isinstance(module, PyroModule) and module._pyro_samples:
            raise ValueError(
                "net already has PyroSample sites; pass a plain torch.nn.Module "
                "(its weights become random here)"
            )
    for name, param in net.named_parameters():
        if isinstance(param, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"parameter {name!r} is uninitialised (a lazy module): run one forward "
                "pass through net before calling bayesian()"
            )


def _check_likelihood(
    likelihood: object, heteroscedastic: object, noise_prior_scale: object, df: object
) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
    if not isinstance(heteroscedastic, bool):
        raise ValueError(f"heteroscedastic must be a bool, got {heteroscedastic!r}")
    if likelihood == "categorical" and heteroscedastic:
        raise ValueError(
            "heteroscedastic=True is for regression: pass likelihood='normal' or 'studentt'"
        )
    positive = isinstance(noise_prior_scale, int | float) and not isinstance(
        noise_prior_scale, bool
    )
    if not positive or not noise_prior_scale > 0:
        raise ValueError(f"noise_prior_scale must be a positive float, got {noise_prior_scale!r}")
    if df is not None:
        if likelihood != "studentt":
            raise ValueError(
                f"df is the StudentT's degrees of freedom; likelihood is {likelihood!r}"
            )
        if isinstance(df, bool) or not isinstance(df, int | float) or not df > 0:
            raise ValueError(f"df must be a positive float, got {df!r}")


def _select_params(
    net: nn.Module, filter: ParamFilter
) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """``(dotted name, owning module, attribute, value)`` of every parameter to randomise."""
    seen: dict[int, str] = {}
    selected = []
    for module_name, module in net.named_modules():
        for attr, value in module.named_parameters(recurse=False):
            name = f"{module_name}.{attr}" if module_name else attr
            if id(value) in seen:
                raise ValueError(
                    f"parameters {seen[id(value)]!r} and {name!r} are the same tensor (tied "
                    "weights); untie them before calling bayesian()"
                )
            seen[id(value)] = name
            if filter(name, module):
                selected.append((name, module, attr, value))
    return selected


def _warn_on_param_store_clash(names: list[str]) -> None:
    store = pyro.get_param_store()
    clashes = [name for name in names if name in store]
    if clashes:
        warnings.warn(
            f"Pyro's param store already holds {clashes[0]!r} (and {len(clashes) - 1} more "
            "names of this model's point parameters); call pyro.clear_param_store() before "
            "training this model, or its norm-layer parameters will not be fitted",
            stacklevel=3,
        )
