"""Shared fixtures: a clean param store and seeded generators for every test; a device list."""

import pyro
import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]
"""Parametrise a test with ``@pytest.mark.parametrize("device", DEVICES)`` to run it on CUDA too."""


@pytest.fixture(autouse=True)
def clean_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
