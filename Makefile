# pairroom: `make run` serves on http://127.0.0.1:8000, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
DB     ?= sqlite:///./pairroom.db

.PHONY: run test install install-dev node-deps bench bench-quick clean

$(BIN)/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || scripts/apt-install python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

tests/node/node_modules/.stamp: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node-deps: tests/node/node_modules/.stamp

run: install
	$(BIN)/pairroom serve --host $(HOST) --port $(PORT) --db $(DB)

test: install-dev node-deps
	PAIRROOM_TEST_PG="$$(scripts/ensure-postgres)" $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .cache tests/node/node_modules bench/loadgen/node_modules
