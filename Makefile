# pushsvc — the two commands: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test install system-deps lint typecheck unit js-test bench clean

run: install                 ## install and start one dev node with the demo page
	./scripts/dev-run.sh

test: system-deps install lint typecheck unit js-test   ## install everything, lint, type-check, test

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	./scripts/system-deps.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/coverage run -m pytest -p no:cacheprovider $(PYTEST_ARGS)
	$(BIN)/coverage report --skip-covered --sort=cover | tail -n 25

js-test:
	node --test clients/js/test/

bench: install
	$(BIN)/python bench/fanout.py --start-server --connections 19000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage test-artifacts
