"""The light name lists of the parser agree with the registries that build the objects."""

from pyro_otmdr.evaluation.robustness import THREATS
from pyro_otmdr.evaluation.shift import SHIFTS
from pyro_otmdr.experiments import config, data, models, names


def test_names_match_the_registries():
    assert names.MODEL_NAMES == models.MODEL_NAMES
    assert names.DATASET_NAMES == data.DATASET_NAMES
    assert tuple(THREATS) == names.THREAT_NAMES
    assert names.SHIFT_NAMES == SHIFTS
    assert config.GUIDES == names.GUIDES and config.DEFAULT_RHO == names.DEFAULT_RHO
