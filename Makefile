# The README's commands. Each target creates .venv (python3 -m venv + pip) when it is missing
# and installs the project into it, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m hypernet.quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check hypernet tests scripts
	$(BIN)/ruff format --check hypernet tests scripts

format: $(STAMP)
	$(BIN)/ruff format hypernet tests scripts
	$(BIN)/ruff check --fix hypernet tests scripts

clean:
	rm -rf $(VENV) outputs wandb .pytest_cache .ruff_cache
