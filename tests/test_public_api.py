"""The public import paths survive the package's layout: the root's names and the stable modules."""

import importlib

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

STABLE_MODULES = {
    "pyro_otmdr.bayesian": "pyro_otmdr.bayes.bnn",
    "pyro_otmdr.data": "pyro_otmdr.experiments.data",
    "pyro_otmdr.models": "pyro_otmdr.experiments.models",
    "pyro_otmdr.metrics": "pyro_otmdr.evaluation.metrics",
    "pyro_otmdr.checkpoint": "pyro_otmdr.experiments.checkpoint",
    "pyro_otmdr.optim": "pyro_otmdr.model_space.optim",
    "pyro_otmdr.training": "pyro_otmdr.experiments.training",
    "pyro_otmdr.distributed": "pyro_otmdr.model_space.distributed",
    "pyro_otmdr.evaluation": (
        "pyro_otmdr.evaluation.predictive",
        "pyro_otmdr.evaluation.robustness",
    ),
    "pyro_otmdr.experiments": "pyro_otmdr.experiments.config",
    "pyro_otmdr.attacks": "pyro_otmdr.data_space",
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
        assert any(getattr(stable, name) is getattr(h, name, None) for h in homes), name
