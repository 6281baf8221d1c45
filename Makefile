# vitdex developer entry points. Every target sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The catalog tests run on SQLite and on this PostgreSQL server (a fresh database per test).
export VITDEX_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: setup setup-browser demo test lint typecheck unit integration e2e browser bench clean

setup: $(STAMP)

# pyproject.toml takes any torch 2.6+; constraints.txt pins the CPU build these machines carry.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,demo]'
	touch $(STAMP)

# Browser tests drive the system chromium (Playwright never downloads a browser). As root
# with apt-get it is installed here; elsewhere install it yourself (the tests skip without it).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	  else \
	    echo "browser tests need chromium (apt-get install chromium); they are skipped without it"; \
	  fi

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

browser: setup setup-browser
	$(VENV)/bin/pytest tests/browser -q

test: lint typecheck setup-browser
	$(VENV)/bin/pytest tests -q

# Each benchmark prints its figures and the ratios its targets apply to.
bench: setup
	$(PY) -m bench.index_throughput
	$(PY) -m bench.search
	$(PY) -m bench.store_memory
	$(PY) -m bench.http
	$(PY) -m bench.train_step
	$(PY) -m bench.ui
	$(PY) -m bench.duplicates
	$(PY) -m bench.heads

clean:
	rm -rf demo-home .bench .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
