# backvault: `make demo` and `make test` set everything up themselves on a fresh Debian 12.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BACKVAULT_TEST_FAST_KDF ?= 1

.PHONY: demo test lint typecheck unit services bench bench-quick clean system-deps

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "installing $(PYTHON)"; apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c "import ensurepip" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3.11-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
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

demo: $(STAMP)
	BACKVAULT_TEST_FAST_KDF=0 $(BIN)/python examples/demo.py

# Benchmarks against restic and borg (not part of `make test`: they take minutes).
system-deps:
	@command -v restic >/dev/null && command -v borg >/dev/null || { apt-get update -qq && apt-get install -y -qq restic borgbackup; }

bench: $(STAMP) system-deps
	BACKVAULT_TEST_FAST_KDF=0 $(BIN)/python bench/compare_engines.py --size-mb 1024

bench-quick: $(STAMP) system-deps
	BACKVAULT_TEST_FAST_KDF=0 $(BIN)/python bench/compare_engines.py --size-mb 128

clean:
	rm -rf $(VENV) .demo bench/work .pytest_cache .mypy_cache .ruff_cache .hypothesis
