"""``otmdr train --jit``: the run's ELBO is Pyro's ``JitTrace_ELBO``, and SAM and OT-MDR compile
their passes over it. Their compiled steps equal the uncompiled ones (``tests/model_space/
test_jit.py``), so a run with ``--jit`` ends with the metrics of the run without it.

Plain SVI with ``--jit`` runs Pyro's own ``JitTrace_ELBO``, which draws a Gaussian guide's noise
inside its graph and drops the plate's unused random subsample from it: from its second step on
it draws other noise than the uncompiled run (the same distribution, not the same draws), so its
metrics are not compared here (a point estimate has no noise, and matches).
"""

import json

import pytest

from pyro_otmdr.experiments.cli import main
from pyro_otmdr.experiments.cli.parser import build_parser
from pyro_otmdr.experiments.cli.rundir import config_from_args

FLAGS = ["--epochs", "1", "--hidden", "8", "--batch-size", "256", "--num-samples", "4"]
FLAGS += ["--device", "cpu", "--quiet"]


def test_jit_builds_a_jit_elbo_under_every_method():
    from pyro_otmdr.experiments import make_loss

    args = build_parser().parse_args(["train", "--jit", "--device", "cpu"])
    for method in ("svi", "sam", "otmdr"):
        config = config_from_args(args, guide="normal", method=method)
        assert config.jit
        loss = make_loss(config)
        elbo = loss if method == "svi" else loss.elbo
        assert type(elbo).__name__ == "JitTrace_ELBO"
        assert method == "svi" or loss.compiled is not None
    args = build_parser().parse_args(["train", "--device", "cpu"])
    config = config_from_args(args, guide="normal", method="otmdr")
    assert not config.jit and make_loss(config).compiled is None


def test_jit_keeps_the_fingerprint_of_runs_that_predate_it():
    from pyro_otmdr.experiments import ExperimentConfig

    config = ExperimentConfig()
    old = {k: v for k, v in config.to_dict().items() if k != "jit"}
    assert ExperimentConfig.from_dict(old).fingerprint() == config.fingerprint()
    assert ExperimentConfig(jit=True).fingerprint() != config.fingerprint()


def test_jit_with_armor_or_under_plain_svi_is_refused_before_training():
    from pyro_otmdr.experiments import ExperimentConfig, make_loss

    with pytest.raises(ValueError, match=r"armor solves its dual.*drop --jit"):
        make_loss(ExperimentConfig(data_robust="armor", jit=True))
    with pytest.raises(ValueError, match=r"plain SVI.*drop --jit"):
        make_loss(ExperimentConfig(data_robust="at", method="svi", jit=True))
    loss = make_loss(ExperimentConfig(data_robust="wdat", method="otmdr", jit=True))
    assert type(loss.elbo.elbo).__name__ == "JitTrace_ELBO" and loss.compiled is not None


@pytest.mark.parametrize(("guide", "method"), [("normal", "otmdr"), ("delta", "sam")])
def test_a_digits_epoch_with_jit_ends_with_the_metrics_of_one_without(tmp_path, guide, method):
    runs = {}
    for jit in (False, True):
        out = tmp_path / f"jit-{jit}"
        argv = ["train", *FLAGS, "--guide", guide, "--method", method, "--out", str(out)]
        assert main([*argv, *(["--jit"] if jit else [])]) == 0
        runs[jit] = json.loads((out / "metrics.json").read_text())
    # the compiled steps equal the uncompiled ones to float32 rounding; the metrics are means
    # over the test set of those networks' predictions
    for name, value in runs[False]["metrics"].items():
        assert runs[True]["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
