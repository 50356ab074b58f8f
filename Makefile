# The two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgeloop-installed
DEMO_DIR ?= .edgeloop/demo

.PHONY: help venv test lint format demo bench proto clean

help:
	@echo "make demo   - run the edgeloop loop on embedded defaults (sets up .venv)"
	@echo "make test   - run the test suite (sets up .venv; needs Mosquitto and PostgreSQL)"
	@echo "make lint   - ruff + mypy + import-linter (the layers in docs/ARCHITECTURE.md)"
	@echo "make bench  - benchmarks, results in bench/results/*.json (make bench-NAME for one)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: venv
	$(PY) -m proto.generate

demo: venv
	$(PY) -m edgeloop_cli.demo --data-dir $(DEMO_DIR) $(DEMO_ARGS)

bench: venv
	$(PY) -m bench

bench-%: venv
	$(PY) -m bench $*

clean:
	rm -rf $(VENV) .edgeloop bench/results .pytest_cache .mypy_cache .ruff_cache
