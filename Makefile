# Two entry points do all the set-up on a fresh machine:
#   make demo   -- create .venv, install, run the main job (otmdr train + evaluate on digits)
#   make test   -- create .venv, install, lint, run the test suite
PY := .venv/bin/python
# Python 3.12, from PATH or pyenv (.python-version selects 3.12 for pyenv's shims).
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/shims/python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do command -v $$p >/dev/null 2>&1 && echo $$p && break; done)
STAMP := .venv/.installed
SRC := pyro_otmdr tests examples benchmarks

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "Python 3.12 not found: install it (e.g. pyenv install 3.12)"; exit 1; }
	$(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

.PHONY: install demo test test-isa lint bench docs
install: $(STAMP)

demo: $(STAMP)
	.venv/bin/otmdr train --out runs/demo --overwrite
	.venv/bin/otmdr evaluate runs/demo --ood fakedata

lint: $(STAMP)
	$(PY) -m ruff check $(SRC)
	$(PY) -m ruff format --check $(SRC)

test: lint
	$(PY) -m pytest -q

# The numerics-heavy tests (hand-derived values, gradients, tolerances) once more on the baseline
# instruction set, ATen's DEFAULT kernels and MKL's SSE4.2 ones: they must not depend on a CPU's
# rounding (AVX2 here, AVX-512 elsewhere). The first line fails if the emulation does not apply.
test-isa: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(PY) -c "import torch; assert torch.backends.cpu.get_cpu_capability() == 'DEFAULT', torch.backends.cpu.get_cpu_capability()"
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 $(PY) -m pytest -q -m "not slow" \
		tests/model_space tests/data_space tests/evaluation tests/bayes \
		tests/workflow/test_data.py tests/workflow/test_checkpoint.py

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

# The docs site (Sphinx, MyST, Furo): the pages of docs/ and the API reference from the
# docstrings, warnings as errors.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
