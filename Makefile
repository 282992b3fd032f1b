# backvault: `make demo` and `make test` set everything up themselves on a fresh Debian 12.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BACKVAULT_TEST_FAST_KDF ?= 1

.PHONY: demo demo-stop demo-repo test lint typecheck unit services bench bench-quick clean system-deps

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "installing $(PYTHON)"; apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c "import ensurepip" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3.11-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m compileall -q src >/dev/null  # what a non-editable install does
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

services:
	bash scripts/ensure-services.sh

test: lint typecheck services unit

# The service end to end: a server on 127.0.0.1:8787 (BACKVAULT_DEMO_PORT=N for another port), a
# sample tree and SQLite database backed up, restored and verified; state in .demo/. Add
# DEMO_ARGS=--keep-running to leave the server up for the dashboard, and `make demo-stop` later.
DEMO_ARGS ?=
demo: $(STAMP)
	BACKVAULT_TEST_FAST_KDF=0 $(BIN)/python examples/server_demo.py $(DEMO_ARGS)

demo-stop: $(STAMP)
	$(BIN)/python examples/server_demo.py --stop

# The repository engine alone through `backvault repo` (in .demo/repo-demo/, started over each run).
demo-repo: $(STAMP)
	BACKVAULT_TEST_FAST_KDF=0 $(BIN)/python examples/demo.py

# Benchmarks against restic and borg (not part of `make test`: they take minutes).
system-deps:
	@command -v restic >/dev/null && command -v borg >/dev/null || { apt-get update -qq && apt-get install -y -qq restic borgbackup; }

bench: $(STAMP) system-deps
	BACKVAULT_TEST_FAST_KDF=0 $(BIN)/python bench/compare_engines.py --size-mb 1024

bench-quick: $(STAMP) system-deps
	BACKVAULT_TEST_FAST_KDF=0 $(BIN)/python bench/compare_engines.py --size-mb 128

clean:
	-[ -x $(BIN)/python ] && $(BIN)/python examples/server_demo.py --stop
	rm -rf $(VENV) .demo bench/work .pytest_cache .mypy_cache .ruff_cache .hypothesis
