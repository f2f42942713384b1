"""The model zoo: plain ``torch.nn.Module`` classifiers that return logits.

Build one by name with :func:`build_model`; turn it into a Bayesian Pyro model with
:func:`pyro_otmdr.bayes.bnn.bayesian`.

========================  ================================================  ==========
name                      network                                           parameters
========================  ================================================  ==========
``mlp``                   :class:`MLP` for flat features (``in_features``)  small
``cnn``                   :class:`SmallCNN`, BatchNorm, 8x8 or 32x32        ~0.1M
``resnet10``              CIFAR ResNet-10 (3x3 stem, no max-pool)           ~4.9M
``resnet18``              CIFAR ResNet-18                                   ~11.2M
``wrn28_10``              WideResNet-28-10                                  ~36.5M
``wrn``                   WideResNet, any ``depth``/``widen_factor``        varies
``mobilenet_v2``          torchvision MobileNetV2, 32x32 stem               ~2.2M
``efficientnet_b0``       torchvision EfficientNet-B0, 32x32 stem           ~4.0M
``densenet121``           torchvision DenseNet-121, 32x32 stem              ~7.0M
========================  ================================================  ==========
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .normalize import Normalize
from .resnet import BasicBlock, CifarResNet, resnet10, resnet18
from .simple import MLP, SmallCNN
from .torchvision_cifar import densenet121_cifar, efficientnet_b0_cifar, mobilenet_v2_cifar
from .wide_resnet import WideBasicBlock, WideResNet, wide_resnet, wrn28_10

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "BasicBlock",
    "CifarResNet",
    "Normalize",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "build_model",
    "densenet121_cifar",
    "efficientnet_b0_cifar",
    "mobilenet_v2_cifar",
    "resnet10",
    "resnet18",
    "wide_resnet",
    "wrn28_10",
]


def _mlp(num_classes: int, in_channels: int, in_features: int | None, **kwargs: Any) -> nn.Module:
    if in_features is None:
        raise ValueError("the 'mlp' model needs in_features (e.g. in_features=64 for digits)")
    return MLP(in_features, num_classes, **kwargs)


def _image_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, in_features: int | None, **kwargs: Any):
        return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)

    return build


def _cnn(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    return SmallCNN(in_channels, num_classes, **kwargs)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _image_model(_cnn),
    "resnet10": _image_model(resnet10),
    "resnet18": _image_model(resnet18),
    "wrn28_10": _image_model(wrn28_10),
    "wrn": _image_model(wide_resnet),
    "mobilenet_v2": _image_model(mobilenet_v2_cifar),
    "efficientnet_b0": _image_model(efficientnet_b0_cifar),
    "densenet121": _image_model(densenet121_cifar),
}

#: The names :func:`build_model` accepts.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(
    name: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    in_features: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier of the zoo by name (see :data:`MODEL_NAMES`).

    ``in_features`` is used by ``mlp`` only (and required there); ``in_channels``
    by the image networks only; the other one is ignored, so a script may pass
    both. Extra keyword arguments go to the network's builder: ``hidden``,
    ``activation``, ``dropout`` (``mlp``); ``channels`` (``cnn``); ``width``
    (``resnet10``/``resnet18``); ``depth``, ``widen_factor``, ``dropout`` (``wrn``);
    ``dropout`` (``wrn28_10``); torchvision's own arguments for the torchvision nets.

    :param name: one of :data:`MODEL_NAMES`.
    :param num_classes: the number of classes (the size of the logits).
    :param in_channels: image channels (1 for digits images, 3 for CIFAR).
    :param in_features: flat input size for ``mlp`` (64 for digits).
    :returns: a freshly initialised ``torch.nn.Module`` returning logits.

    Usage::

        import torch
        from pyro_otmdr.workflow.models import build_model

        net = build_model("resnet18", num_classes=10)
        net = build_model("mlp", num_classes=10, in_features=64, hidden=(100, 100))
        assert net(torch.rand(5, 64)).shape == (5, 10)
        net = build_model("wrn", num_classes=100, depth=16, widen_factor=8)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if in_features is not None and (not isinstance(in_features, int) or in_features < 1):
        raise ValueError(f"in_features must be a positive int or None, got {in_features!r}")
    return _REGISTRY[name](num_classes, in_channels, in_features, **kwargs)
