"""Shared fixtures: a clean param store and seeded generators for every test; a device list;
float64 for one test; float32's resolution, to write float32 tolerances in."""

import pyro
import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]
"""Parametrise a test with ``@pytest.mark.parametrize("device", DEVICES)`` to run it on CUDA too."""

EPS32 = torch.finfo(torch.float32).eps
"""float32's resolution (2^-23 ~ 1.2e-7): float32 tolerances are written as multiples of it, with
the number of operations that justifies the multiple, so they hold on any CPU's rounding."""


@pytest.fixture(autouse=True)
def clean_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """float64 as the default dtype for one test (``@pytest.mark.usefixtures("float64")``).

    Hand-derived values and finite differences are checked in float64: its rounding (2.2e-16)
    is far below any tolerance tight enough to catch a bug, whatever the CPU's instruction set.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
