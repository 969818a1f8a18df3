# pairroom: `make run` serves on http://127.0.0.1:8000, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
DB     ?= sqlite:///./pairroom.db

WEB_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/room.html frontend/vite.config.js

.PHONY: run test fuzz install install-dev node-deps web kernel-env services bench bench-quick clean

$(BIN)/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || scripts/apt-install python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml extensions/pairroom-webhook/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet -e extensions/pairroom-webhook
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

tests/node/node_modules/.stamp: tests/node/package-lock.json
	cd tests/node && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

node-deps: tests/node/node_modules/.stamp

frontend/node_modules/.package-lock.json: frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --loglevel=error

pairroom/static/room.html: frontend/node_modules/.package-lock.json $(WEB_SOURCES)
	cd frontend && npm run build --silent

# the browser app, built into pairroom/static and served by the server
web: pairroom/static/room.html

# what the sandboxed kernels need: bubblewrap and a Python the sandbox user can read
kernel-env:
	@scripts/ensure-bwrap >/dev/null
	@scripts/ensure-kernel-env >/dev/null

run: install web kernel-env
	$(BIN)/pairroom serve --host $(HOST) --port $(PORT) --db $(DB)

# the real services the tests start or use: Redis (own instances), PostgreSQL, Chromium, namespaces
services: kernel-env
	@scripts/ensure-redis >/dev/null
	@scripts/ensure-chromium >/dev/null
	@command -v unshare >/dev/null && command -v ip >/dev/null || scripts/apt-install util-linux iproute2

test: install-dev node-deps web services
	PAIRROOM_TEST_PG="$$(scripts/ensure-postgres)" PAIRROOM_REDIS_SERVER="$$(scripts/ensure-redis)" \
		$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# the long run of tests/test_fuzz.py (make test runs a short one): hundreds of examples per target
fuzz: install-dev node-deps services
	PAIRROOM_FUZZ=long PAIRROOM_REDIS_SERVER="$$(scripts/ensure-redis)" \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .cache tests/node/node_modules bench/loadgen/node_modules frontend/node_modules pairroom/static
