# Two commands on a fresh machine: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint format install clean

$(STAMP): pyproject.toml scripts/venv.sh scripts/ensure-system.sh
	@scripts/ensure-system.sh
	@scripts/venv.sh
	@echo "installing python packages into $(VENV) ..."
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2> >(grep -v "is ignored" >&2)
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/autograder up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP)
	@scripts/ensure-services.sh
	@scripts/ensure-browser.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
