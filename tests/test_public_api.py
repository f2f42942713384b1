"""The public import paths survive the package's layout: the root's names, the stable modules,
and the old paths, deprecated for one release."""

import importlib
import sys

import pytest

import pyro_otmdr

ROOT_NAMES = {
    "ARMOR",
    "DEFAULT_NOISE_STD",
    "OTMDR",
    "SAM",
    "TRADES",
    "WDAT",
    "AdversarialTraining",
    "AutoDeltaEnsemble",
    "CheckpointError",
    "EnsembleELBO",
    "EvaluationResult",
    "NonFiniteLossError",
    "OTMDROptimizer",
    "SAMOptimizer",
    "SharpnessAwareStep",
    "StepInfo",
    "evaluate",
    "load_checkpoint",
    "perturbed_by_default",
    "robustness",
    "save_checkpoint",
}

#: The public modules that gather a layer's names.
STABLE_MODULES = {
    "pyro_otmdr.evaluation": (
        "pyro_otmdr.evaluation.predictive",
        "pyro_otmdr.evaluation.robustness",
    ),
    "pyro_otmdr.experiments": (
        "pyro_otmdr.experiments.config",
        "pyro_otmdr.experiments.builders",
        "pyro_otmdr.experiments.experiment",
        "pyro_otmdr.experiments.runs",
        "pyro_otmdr.experiments.finetune",
    ),
    "pyro_otmdr.attacks": "pyro_otmdr.data_space",
}

#: Old paths kept for one release: each warns and is its new home itself.
DEPRECATED = {
    "pyro_otmdr.bayesian": "pyro_otmdr.bayes.bnn",
    "pyro_otmdr.data": "pyro_otmdr.workflow.data",
    "pyro_otmdr.models": "pyro_otmdr.workflow.models",
    "pyro_otmdr.metrics": "pyro_otmdr.evaluation.metrics",
    "pyro_otmdr.checkpoint": "pyro_otmdr.workflow.checkpoint",
    "pyro_otmdr.optim": "pyro_otmdr.model_space.optim",
    "pyro_otmdr.training": "pyro_otmdr.workflow.training",
    "pyro_otmdr.distributed": "pyro_otmdr.model_space.distributed",
    "pyro_otmdr.experiments.data": "pyro_otmdr.workflow.data",
    "pyro_otmdr.experiments.models": "pyro_otmdr.workflow.models",
    "pyro_otmdr.experiments.training": "pyro_otmdr.workflow.training",
    "pyro_otmdr.experiments.checkpoint": "pyro_otmdr.workflow.checkpoint",
    "pyro_otmdr.experiments.outputs": "pyro_otmdr.workflow.outputs",
}


def test_the_root_exports_what_it_always_did():
    assert set(pyro_otmdr.__all__) >= ROOT_NAMES
    for name in pyro_otmdr.__all__:
        assert getattr(pyro_otmdr, name) is not None


@pytest.mark.parametrize("path", STABLE_MODULES)
def test_a_stable_module_re_exports_its_layer(path):
    homes = STABLE_MODULES[path]
    homes = [importlib.import_module(h) for h in ((homes,) if isinstance(homes, str) else homes)]
    stable = importlib.import_module(path)
    assert stable.__all__
    for name in stable.__all__:
        assert any(getattr(stable, name) is vars(h).get(name) for h in homes), name


@pytest.mark.parametrize("old", DEPRECATED)
def test_a_deprecated_path_warns_and_is_its_new_home(old, monkeypatch):
    new = importlib.import_module(DEPRECATED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)  # import it afresh
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated.*import {new.__name__}"):
        module = importlib.import_module(old)
    assert module is new and module.__all__


def test_the_names_config_gave_up_warn_and_are_their_new_homes():
    from pyro_otmdr.experiments import config, runs

    with pytest.warns(DeprecationWarning, match="config.train_experiment is deprecated.*runs"):
        assert config.train_experiment is runs.train_experiment
