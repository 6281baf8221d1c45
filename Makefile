# vitdex developer entry points. Every target sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The catalog tests run on SQLite and on this PostgreSQL server (a fresh database per test).
export VITDEX_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: setup demo test lint typecheck unit integration e2e bench clean

setup: $(STAMP)

# pyproject.toml takes any torch 2.6+; constraints.txt pins the CPU build these machines carry.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,demo]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vitdex demo

# lint-imports holds the layers of DESIGN.md (the contracts are in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest tests/unit -q

integration: setup
	$(VENV)/bin/pytest tests/integration -q

e2e: setup
	$(VENV)/bin/pytest tests/e2e -q

test: lint typecheck
	$(VENV)/bin/pytest tests -q

# Each benchmark prints its figures and the ratios its targets apply to.
bench: setup
	$(PY) -m bench.index_throughput
	$(PY) -m bench.search
	$(PY) -m bench.store_memory
	$(PY) -m bench.http
	$(PY) -m bench.train_step

clean:
	rm -rf demo-home .bench .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
