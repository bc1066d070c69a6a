# Two commands: `make run` (set up and start the server), `make test` (set up and run all checks).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint pytest pytest-cluster screenshots bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tether serve $(ARGS)

test: lint pytest pytest-cluster

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(ARGS)

# the same suite on PostgreSQL + Redis (private servers started by the tests)
pytest-cluster: $(STAMP)
	TETHER_TEST_BACKEND=cluster $(BIN)/pytest $(ARGS)

# the console's browser tests, writing their screenshots to docs/console/ (the README's)
screenshots: $(STAMP)
	TETHER_SCREENSHOTS_DIR=docs/console $(BIN)/pytest tests/integration/test_console_browser.py

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) tether-data .pytest_cache .mypy_cache .ruff_cache
