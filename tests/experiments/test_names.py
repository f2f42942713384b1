"""The light name lists of the parser agree with the registries that build the objects."""

from pyro_otmdr.evaluation.robustness import THREATS
from pyro_otmdr.evaluation.shift import SHIFTS
from pyro_otmdr.experiments import config, names
from pyro_otmdr.workflow import data, models


def test_names_match_the_registries():
    assert names.MODEL_NAMES == models.MODEL_NAMES
    assert names.DATASET_NAMES == data.DATASET_NAMES
    assert tuple(THREATS) == names.THREAT_NAMES
    assert names.SHIFT_NAMES == SHIFTS
    assert config.GUIDES == names.GUIDES and config.DEFAULT_RHO == names.DEFAULT_RHO


def test_data_robust_names_match_the_losses_and_the_config_fields():
    assert config.DATA_ROBUST == names.DATA_ROBUST
    assert set(names.DATA_ROBUST) == {"none", *config.DATA_ROBUST_LOSSES}
    assert set(names.DATA_ROBUST_PARAMS) == set(names.DATA_ROBUST)
    fields = set(config.ExperimentConfig.__dataclass_fields__)
    assert {p for ps in names.DATA_ROBUST_PARAMS.values() for p in ps} <= fields
