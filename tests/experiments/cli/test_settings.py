"""Every field of ExperimentConfig is a flag built from its one declaration, and round-trips."""

from dataclasses import fields

import pytest

from pyro_otmdr.experiments.cli.parser import build_parser
from pyro_otmdr.experiments.cli.rundir import config_from_args
from pyro_otmdr.experiments.config import ExperimentConfig
from pyro_otmdr.experiments.settings import Flag, Number, setting_of

SPECS = fields(ExperimentConfig)


def _argv(config: ExperimentConfig) -> list[str]:
    """The ``otmdr train`` flags that give ``config``."""
    argv = ["train"]
    for spec in SPECS:
        value, flag = getattr(config, spec.name), setting_of(spec).flag_for(spec)
        if isinstance(setting_of(spec).kind, Flag):
            argv += [flag] if value else []
        elif value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            argv += [flag, text]
    return argv


def test_every_field_has_its_own_flag():
    flags = [setting_of(spec).flag_for(spec) for spec in SPECS]
    assert len(set(flags)) == len(flags)
    actions = {a.dest: a for a in _train_parser()._actions}
    for spec in SPECS:
        assert setting_of(spec).flag_for(spec) in actions[spec.name].option_strings


def test_the_defaults_round_trip_through_the_flags():
    config = ExperimentConfig(device="cpu").resolved()
    assert config_from_args(build_parser().parse_args(_argv(config))) == config


def test_other_values_round_trip_through_the_flags():
    chosen = ExperimentConfig(
        dataset="fakedata",
        val_size=3,
        model="cnn",
        hidden=(8, 4),
        width=4,
        guide="ensemble",
        method="sam",
        rho=0.25,
        rho2=0.5,
        n_particles=3,
        num_members=2,
        noise_std=0.125,
        data_robust="armor",
        eps=0.375,
        delta=0.0625,
        beta=1.5,
        budget=0.03125,
        epochs=2,
        batch_size=16,
        optimizer="sgd",
        lr=0.5,
        momentum=0.75,
        schedule="constant",
        prior_scale=0.5,
        init_scale=0.25,
        num_samples=4,
        seed=7,
        device="cpu",
        num_workers=1,
        download=True,
        data_dir="somewhere",
    ).resolved()
    assert config_from_args(build_parser().parse_args(_argv(chosen))) == chosen


def test_a_flag_left_out_takes_the_value_its_setting_computes():
    args = build_parser().parse_args(["train", "--optimizer", "sgd", "--device", "cpu"])
    assert config_from_args(args).lr == 0.1
    args = build_parser().parse_args(["train", "--device", "cpu"])
    assert config_from_args(args).lr == 0.01


def test_the_help_shows_each_default_once_from_the_field():
    text = _train_parser().format_help()
    assert "linf radius of at, trades, armor (default 0.1)" in text
    assert "--particles PARTICLES" in text and "OT-MDR particles K (default 1)" in text


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (Number(int, low=0, open_low=True), "3", "0"),
        (Number(float, low=0), "0", "-0.5"),
        (Number(float, low=0, open_low=True, high=1), "1", "1.5"),
    ],
)
def test_a_kind_parses_a_flag_and_checks_a_value_alike(kind, good, bad):
    import argparse

    value = kind.parse(good)
    kind.check("x", value)
    with pytest.raises(argparse.ArgumentTypeError):
        kind.parse(bad)
    with pytest.raises(ValueError, match="x must be"):
        kind.check("x", kind.type(bad))


def _train_parser():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    return commands.choices["train"]
