"""The light name lists of the parser agree with the registries that build the objects."""

from dataclasses import fields, replace

from pyro_otmdr.data_space import objectives
from pyro_otmdr.evaluation.shift import SHIFTS
from pyro_otmdr.experiments import builders, config, names
from pyro_otmdr.model_space import DEFAULT_NOISE_STD
from pyro_otmdr.workflow import data, models


def test_names_match_the_registries():
    assert names.MODEL_NAMES == models.MODEL_NAMES
    assert names.DATASET_NAMES == data.DATASET_NAMES
    assert names.SHIFT_NAMES == SHIFTS
    assert config.ExperimentConfig().noise_std == DEFAULT_NOISE_STD
    assert names.WDAT_ATTACK_LOSSES == objectives.WDAT_ATTACK_LOSSES
    assert names.WDAT_OUTERS == objectives.WDAT_OUTERS


def test_every_registered_data_robust_loss_takes_its_fields_as_keywords():
    known = {spec.name for spec in fields(config.ExperimentConfig)}
    assert ("none", *builders.DATA_ROBUST_LOSSES) == names.DATA_ROBUST
    odd = {  # none of them the defaults
        **{"eps": 0.125, "delta": 0.0625, "beta": 2.5, "budget": 0.03125},
        **{"attack_loss": "ce", "outer": "adversarial", "budget_subset": 3},
    }
    for name, cls in builders.DATA_ROBUST_LOSSES.items():
        params = names.DATA_ROBUST_PARAMS[name]
        assert set(params) <= known, name
        chosen = replace(config.ExperimentConfig(data_robust=name), **odd)
        loss = builders.make_data_robust(chosen)
        assert type(loss) is cls
        assert {p: getattr(loss.objective, p) for p in params} == {p: odd[p] for p in params}


def test_a_flags_help_names_the_losses_that_use_it():
    assert names.users_of("eps") == "at, trades, armor"
    assert names.users_of("beta") == "trades, wdat"
    assert names.users_of("outer") == "wdat"
