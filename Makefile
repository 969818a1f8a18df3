# pairroom: `make run` serves on http://127.0.0.1:8000, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
DB     ?= sqlite:///./pairroom.db

WEB_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/room.html frontend/vite.config.js

.PHONY: run test lint fuzz install install-dev node-deps web kernel-env services bench bench-all bench-quick clean extensions extensions-check

$(BIN)/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || scripts/apt-install python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

# the extensions shipped in extensions/, and the ones the tests load by entry point (and the probe)
EXTENSION_PROJECTS := extensions/pairroom-webhook extensions/pairroom-ruff extensions/pairroom-classroom
TEST_EXTENSIONS := $(EXTENSION_PROJECTS) tests/support/pairroom-readonly-probe

$(VENV)/.installed-dev: pyproject.toml $(addsuffix /pyproject.toml,$(TEST_EXTENSIONS)) | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet $(addprefix -e ,$(TEST_EXTENSIONS))
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

# the shipped extensions' wheels (build/extensions/) and their entries in extensions/catalog.json:
# version, SHA-256 and capabilities, through `pairroom extensions publish`. SOURCE_DATE_EPOCH makes the
# wheels byte-for-byte reproducible, so the hashes in the shipped catalog can be checked by rebuilding.
extensions: install
	rm -rf build/extensions && mkdir -p build/extensions
	for project in $(EXTENSION_PROJECTS); do rm -rf $$project/build; \
		SOURCE_DATE_EPOCH=1767225600 $(BIN)/pip wheel --quiet --no-deps --disable-pip-version-check \
			$$project -w build/extensions || exit 1; done
	for wheel in build/extensions/*.whl; do \
		$(BIN)/pairroom extensions publish $$wheel --catalog extensions/catalog.json || exit 1; done

# the shipped catalog's hashes are those of a rebuild: fails when an extension changed without `make extensions`
extensions-check: extensions
	git diff --exit-code extensions/catalog.json

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

# with a secret kept in .pairroom/secret (made on the first run), so links carry roles; prints an owner link
run: install web kernel-env
	$(BIN)/pairroom serve --host $(HOST) --port $(PORT) --db $(DB) --secret-file .pairroom/secret --welcome first-room

# the real services the tests start or use: Redis (own instances), PostgreSQL, Chromium, namespaces
services: kernel-env
	@scripts/ensure-redis >/dev/null
	@scripts/ensure-chromium >/dev/null
	@command -v unshare >/dev/null && command -v ip >/dev/null || scripts/apt-install util-linux iproute2

# the habits: lint and format (ruff), the layers (import-linter), types (mypy: strict on the core), the browser app (biome)
lint: install-dev frontend/node_modules/.package-lock.json
	$(BIN)/ruff check pairroom tests bench extensions
	$(BIN)/ruff format --check pairroom tests bench extensions
	$(BIN)/lint-imports
	$(BIN)/mypy --strict pairroom/protocol pairroom/rooms pairroom/storage
	$(BIN)/mypy pairroom
	cd frontend && ./node_modules/.bin/biome lint

test: install-dev node-deps web services lint
	PAIRROOM_TEST_PG="$$(scripts/ensure-postgres)" PAIRROOM_REDIS_SERVER="$$(scripts/ensure-redis)" \
		$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# the long run of tests/test_fuzz.py (make test runs a short one): hundreds of examples per target
fuzz: install-dev node-deps services
	PAIRROOM_FUZZ=long PAIRROOM_REDIS_SERVER="$$(scripts/ensure-redis)" \
		$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=3600 tests/test_fuzz.py $(PYTEST_ARGS)

# the targets' table: its scenarios against pairroom, Hocuspocus and y-websocket, median of 3 runs
bench: install
	$(BIN)/python bench/run.py --targets

# every scenario against every server (one run each)
bench-all: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/cluster.py

bench-quick: install
	$(BIN)/python bench/run.py --quick
	$(BIN)/python bench/cluster.py --quick

clean:
	rm -rf $(VENV) .cache tests/node/node_modules bench/loadgen/node_modules frontend/node_modules pairroom/static
