"""--geometry: one flag of train, a grid dimension of compare, checked before anything runs."""

import pytest

from pyro_otmdr.experiments.cli import main
from pyro_otmdr.experiments.cli.compare import _grid
from pyro_otmdr.experiments.cli.parser import build_parser
from pyro_otmdr.experiments.cli.rundir import config_from_args


def test_train_takes_a_geometry_and_builds_the_loss_with_it():
    from pyro_otmdr.experiments import make_loss

    args = build_parser().parse_args(["train", "--geometry", "layer", "--device", "cpu"])
    config = config_from_args(args, guide=args.guide, method="sam")
    assert config.geometry == "layer" and make_loss(config).geometry.name == "layer"


def test_compare_spans_the_geometries_of_the_methods_that_move():
    argv = ["compare", "--guides", "delta", "--methods", "svi,otmdr", "--seeds", "1"]
    args = build_parser().parse_args([*argv, "--geometry", "global,layer", "--device", "cpu"])
    cells = [(c.method, c.geometry) for c in _grid(args)]
    assert cells == [("svi", "global"), ("otmdr", "global"), ("otmdr", "layer")]
    args = build_parser().parse_args(
        [*argv, "--guides", "delta,normal", "--geometry", "layer,posterior", "--device", "cpu"]
    )
    cells = [(c.guide, c.method, c.geometry) for c in _grid(args)]
    assert ("delta", "otmdr", "posterior") not in cells and (
        "normal",
        "otmdr",
        "posterior",
    ) in cells


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--geometry", "fisher"], "invalid choice: 'fisher'"),
        (["train", "--geometry", "posterior", "--guide", "delta"], "--guide normal"),
    ],
)
def test_bad_geometries_are_usage_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--device", "cpu"])
    assert info.value.code == 2 and expected in capsys.readouterr().err
