"""Experiments: data sets, the model zoo, the epoch loop, checkpoints, configurations, the CLI.

* :mod:`.data`: digits, CIFAR-10/100 and FakeData loaders;
* :mod:`.models`: the paper's model families by name (:func:`~.models.build_model`);
* :mod:`.training`: the epoch loop over an ``SVI``;
* :mod:`.checkpoint`: atomic, verified checkpoints;
* :mod:`.config`: :class:`ExperimentConfig` to a built, trained and evaluated experiment;
* :mod:`.cli`: the ``otmdr`` command.

The top layer: it may import every other part of the package.

Usage::

    from pyro_otmdr.experiments import run_experiment

    metrics = run_experiment(dataset="digits", guide="normal", method="otmdr", epochs=30)
"""

from .config import *  # noqa: F403
from .config import __all__  # noqa: F401
