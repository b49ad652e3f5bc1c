# quantexp - two commands: `make run` and `make test` (both set everything up first).
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
VENV := .venv
PY := $(VENV)/bin/python
MLFLOW_DB := $(CURDIR)/mlflow.db
ARGS ?=
# The tests run in pytest-xdist workers, one per core (each pinned to its core: tests/conftest.py);
# PYTEST_WORKERS=0 runs them in one process (pdb, prints). Extra options: PYTEST_ARGS="-x tests/cli".
PYTEST_WORKERS ?= auto
PYTEST_ARGS ?=
PYTEST := $(PY) -m pytest -q --durations=20 -n $(PYTEST_WORKERS) --dist worksteal
COVERAGE_DIR := $(CURDIR)/.cache/coverage
# Byte-compiled caches save ~10 s of import per process (torch, transformers);
# some shells export PYTHONDONTWRITEBYTECODE, which would disable them.
unexport PYTHONDONTWRITEBYTECODE

PORT ?= 5000

.PHONY: help setup run test lint test-full coverage bench ui server server-postgres clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.synced  ## create the uv environment from uv.lock (installs uv if missing)

$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --user uv || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen --all-extras --group dev
	@touch $@

run: setup  ## run the default experiment (extra Hydra overrides: make run ARGS="model=lstm")
	$(PY) run.py $(ARGS)

test: setup lint  ## lint + layer contracts + the fast test suite (what CI runs)
	$(PYTEST) $(PYTEST_ARGS)

lint: setup  ## ruff and the import-linter layer contracts (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test-full: setup lint  ## every test, including the slow end-to-end ones
	$(PYTEST) -m "slow or not slow" $(PYTEST_ARGS)

coverage: setup  ## the fast suite under coverage, run.py processes and per-test contexts included
	rm -rf $(COVERAGE_DIR) && mkdir -p $(COVERAGE_DIR)
	COVERAGE_FILE=$(COVERAGE_DIR)/.coverage $(PYTEST) --cov --cov-context=test --cov-report= $(PYTEST_ARGS)
	@# processes that ended after pytest-cov combined its workers' data
	COVERAGE_FILE=$(COVERAGE_DIR)/.coverage $(VENV)/bin/coverage combine --append -q || true
	COVERAGE_FILE=$(COVERAGE_DIR)/.coverage $(VENV)/bin/coverage report --sort=cover | tail -n 25

bench: setup  ## benchmark scripts (figures printed, never asserted)
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/latency_fidelity.py
	$(PY) benchmarks/families.py

ui: setup  ## MLflow UI on http://127.0.0.1:5000 over the same store the runs write to
	@echo "runs table: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning (each run prints its own link)"
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(MLFLOW_DB)} --host 127.0.0.1 --port 5000

server: setup  ## shared MLflow tracking server on 127.0.0.1:$(PORT) (sqlite store + artifacts under server/)
	$(PY) -m quantexp.tracking.server --backend sqlite --port $(PORT) --dir server

server-postgres: setup  ## the same over a PostgreSQL cluster of its own in server/pgdata (Debian's postgresql)
	$(PY) -m quantexp.tracking.server --backend postgres --port $(PORT) --dir server

clean:  ## remove run outputs, the MLflow store and caches (not the environment)
	rm -rf outputs multirun mlruns mlartifacts mlflow.db .cache .pytest_cache optuna
