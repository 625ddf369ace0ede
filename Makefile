# nitro-wallet: the two commands for a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv dev demo test lint format fixtures pytest molecule clean

$(VENV)/.installed: pyproject.toml $(wildcard requirements/*.txt)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sim,dev]' $(if $(wildcard requirements/ansible.txt),-r requirements/ansible.txt)
	touch $@

venv: $(VENV)/.installed

## The whole stack as plain processes, no root: relay on 127.0.0.1:8080 (Ctrl-C stops).
dev: venv
	$(PY) -m nitro_sim.dev

## The appliance end to end, with a curl walk-through.
demo: venv
	bash scripts/demo-local.sh

## Every check: linters, type checks, pytest (unit, property, end-to-end).
test: venv lint pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

fixtures: venv
	$(PY) scripts/fetch-real-fixtures.py

pytest: venv fixtures
	NITRO_WALLET_REQUIRE_REAL_FIXTURES=1 $(VENV)/bin/pytest -q

clean:
	rm -rf .dev-state .demo-state build dist .pytest_cache .mypy_cache .ruff_cache
