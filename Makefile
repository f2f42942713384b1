# Two entry points do all the set-up on a fresh machine:
#   make demo   -- create .venv, install, run the main job
#   make test   -- create .venv, install, lint, run the test suite
PY := .venv/bin/python
STAMP := .venv/.installed

$(STAMP): pyproject.toml constraints.txt
	python -m venv .venv
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

.PHONY: install demo test lint bench
install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits_bnn.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/step_time.py
