# Vigil: `make run` and `make test` do every set-up step themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP_FLAGS ?= --disable-pip-version-check -q
PYTEST_ARGS ?=
CONFIG ?= config/local.yaml
NODES  ?= 2

.PHONY: help setup run test test-all lint bench clean

help:  ## show this help
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# (the C sources too: the install builds the compiled window tables, vigil/detectors/compiled.py)
$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard vigil/*/*.c vigil/*/*.h)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Vigil needs Python >= 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[dev,training,azure,kafka]'
	@touch $(STAMP)

# Azurite (the Azure Storage emulator, npm) for the Event Hubs checkpoint tests; without npm those tests
# skip with a reason and everything else still runs.
AZURITE := .azurite/node_modules/.bin/azurite-blob
$(AZURITE):
	-npm install --prefix .azurite --no-audit --no-fund --loglevel=error azurite@3.37.0

setup: $(STAMP)  ## create .venv and install Vigil with its dev, training, azure and kafka extras

run: $(STAMP)  ## start the daemon on the embedded default profile (config/local.yaml) with NODES training nodes
	VIGIL_NODES__LOCAL=$(NODES) exec $(BIN)/vigil run --config $(CONFIG)  # (exec: a signal to the recipe's shell reaches the daemon)

test: $(STAMP) $(AZURITE)  ## run the default test suite (slow fault/soak tests excluded)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) $(AZURITE)  ## run every test, slow ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff and mypy (strict on vigil/)
	$(BIN)/ruff check vigil tests bench
	$(BIN)/ruff format --check vigil tests bench
	$(BIN)/mypy

bench: $(STAMP)  ## run the benchmarks in bench/
	$(BIN)/python bench/normalize.py
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/stateful.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/eventlog.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/response.py
	$(BIN)/python bench/training.py --repeats 2 --epochs 1
	$(BIN)/python bench/kafka.py --events 2000

clean:  ## remove the virtual environment and local state
	rm -rf $(VENV) var build .pytest_cache .mypy_cache .ruff_cache
	find vigil -name "*.so" -delete
