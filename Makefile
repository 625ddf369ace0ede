# nitro-wallet: the two commands for a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv dev demo demo-dev test test-fast test-unit test-cluster soak bench lint format fixtures clients pytest lock clean clean-dev-state

# One lock for the controller/dev tooling; the package itself is installed without deps.
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

## The whole stack as plain processes, no root: relay on 127.0.0.1:8080 (Ctrl-C stops).
dev: venv
	$(PY) -m nitro_sim.dev $(DEV_ARGS)

## The appliance end to end: Ansible provisions a simulated Nitro host (podman,
## systemd) with playbooks/local_site.yml, then a curl walk-through against its relay.
demo: venv
	bash scripts/demo.sh

## The same walk-through against `make dev`'s processes (no root, no podman), on its
## own ports: DEMO_DEV_ARGS="--relay-port 0 --kms-port 0 --imds-port 0" for free ones.
demo-dev: venv
	bash scripts/demo-dev.sh $(DEMO_DEV_ARGS)

## Every check: ruff, mypy, import-linter (the layers), pytest (unit, property,
## end-to-end, Ansible lint and syntax, the client suite), the 2,000-example property
## runs (hypothesis profile "thorough") and the molecule scenarios preflight_hardware,
## default and cluster on podman systemd hosts (needs root + podman).
test: venv lint fixtures clients
	NITRO_WALLET_REQUIRE_REAL_FIXTURES=1 NITRO_WALLET_REQUIRE_CLIENTS=1 NITRO_WALLET_MOLECULE=1 \
	  NITRO_WALLET_MOLECULE_SCENARIOS=preflight_hardware,default,cluster \
	  NITRO_WALLET_HYPOTHESIS=thorough $(VENV)/bin/pytest -q

## The molecule scenario `cluster` alone (also in `make test`): two simulated hosts, one
## KMS and DynamoDB table, an account made on one host signs on the other, upgrade.yml rolls both hosts
## with 0 failed signatures, a broken release is rolled back. Needs root + podman.
test-cluster: venv
	NITRO_WALLET_MOLECULE=1 NITRO_WALLET_MOLECULE_SCENARIOS=cluster \
	  $(VENV)/bin/pytest -q tests/test_ansible_molecule.py

## Everything but the slow runs (molecule, 2,000-example properties): the fast loop.
test-fast: venv lint fixtures clients
	NITRO_WALLET_REQUIRE_REAL_FIXTURES=1 NITRO_WALLET_REQUIRE_CLIENTS=1 \
	  $(VENV)/bin/pytest -q -m "not slow"

## In-process tests only: no test may start a process (tests/process_guard.py fails it),
## few property examples; no lint, no fixtures download (its cost: docs/reliability.md).
test-unit: venv
	NITRO_WALLET_TEST_TIER=unit NITRO_WALLET_HYPOTHESIS=unit SIGNING_EXAMPLES=40 \
	  $(VENV)/bin/pytest -q -m "not process and not stack and not slow"

## Not in CI: 32 clients for 120 s, then the fault set under the same load; every
## signature verified, RSS of relay and enclave flat within 10% (docs/reliability.md).
soak: venv
	NITRO_WALLET_SOAK=1 $(VENV)/bin/pytest -q -s tests/test_soak.py

## Performance: every row of issue 7's table in one run against the simulated appliance
## (artifacts/bench/latest.json, latest.md, latest.png). QUICK=1 runs in under 3 minutes.
bench: venv
	$(PY) -m bench.run $(if $(QUICK),--quick,)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

fixtures: venv
	$(PY) scripts/fetch-real-fixtures.py

## The real Ethereum clients of tests/clients (ethers, viem, cast, anvil), pinned by its
## package-lock.json; needs node and npm (Debian: apt-get install nodejs npm).
CLIENTS_STAMP := tests/clients/node_modules/.installed
clients: $(CLIENTS_STAMP)
$(CLIENTS_STAMP): tests/clients/package.json tests/clients/package-lock.json
	cd tests/clients && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Regenerate the lock files from requirements/*.in and pyproject.toml.
lock: venv
	cd requirements && for name in enclave relay sim operator; do \
	  ../$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-header \
	    --no-emit-index-url --no-emit-find-links --output-file $$name.txt $$name.in; done
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --no-emit-index-url \
	  --no-emit-find-links --allow-unsafe --extra parent --extra sim --extra dev --extra ansible \
	  --output-file requirements/dev.txt pyproject.toml

## Caches and build outputs only: never artifacts/ (rendered key policies, PCR records)
## nor the dev/demo state (see clean-dev-state).
clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache

## The simulated appliance's state: its KMS keys and every dev/demo account are lost.
clean-dev-state:
	rm -rf .dev-state .demo-state .demo-state.log
