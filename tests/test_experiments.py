"""Real data: BNNs and ensembles on scikit-learn's digits, trained a few epochs by each method."""

import pytest

from pyro_otmdr.experiments import ExperimentConfig, make_guide, make_loss, run_experiment


@pytest.mark.slow
def test_autonormal_bnn_with_otmdr_is_close_to_plain_svi_on_digits():
    common = {"guide": "normal", "epochs": 15, "seed": 0}
    svi = run_experiment(method="svi", **common)
    otmdr = run_experiment(method="otmdr", rho=0.005, n_particles=2, **common)
    print(f"digits AutoNormal: SVI acc {svi['accuracy']:.4f}, OT-MDR acc {otmdr['accuracy']:.4f}")
    assert svi["accuracy"] > 0.9
    assert otmdr["accuracy"] > svi["accuracy"] - 0.03


@pytest.mark.slow
@pytest.mark.parametrize("method", ["svi", "sam", "otmdr"])
def test_every_method_trains_an_ensemble_on_digits(method):
    metrics = run_experiment(guide="ensemble", method=method, rho=0.05, num_members=2, epochs=4)
    assert metrics["accuracy"] > 0.85


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="delta, ensemble, normal"):
        make_guide("gaussian", None)
    with pytest.raises(ValueError, match="svi, sam, otmdr"):
        make_loss(ExperimentConfig(method="adam"))
