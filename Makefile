# WorkNet RPC -- the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
PIP_FLAGS := --quiet --disable-pip-version-check

# Lock files (requirements/*.txt, package-lock.json): `make lock` after changing a dependency.
LOCK_VENV ?= .venv-lock
UPGRADE ?=
PIP_COMPILE = $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --no-emit-index-url \
	--no-emit-find-links --allow-unsafe --strip-extras --no-header
UPGRADE_FLAGS = $(if $(filter all,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),--upgrade-package $(p)))
NODE_PACKAGES := $(dir $(wildcard tests/node/package.json clients/node/package.json))

.PHONY: run test check lint install node-deps node-client lock demo bench soak fuzz clean

# One .venv, one stamp per lock installed into it. `make run` installs only what the daemon and its
# embedded database need (requirements/embedded.txt, about half the packages); `make test` and the
# other tools the development lock (requirements/dev.txt: the same pins plus tests, lint, plots), which
# also satisfies the embedded one. Exactly the locked set (every file checked against its hash, pip's
# progress shown), then the project itself without touching dependencies and built by the locked
# setuptools. Bytecode is compiled on first import (--no-compile: half the install time).
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check --no-compile
define install-project
	$(BIN)/pip install $(PIP_FLAGS) --no-deps --no-build-isolation --use-pep517 -e . --config-settings editable_mode=compat
endef

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-embedded: requirements/embedded.txt setup.py setup.cfg | $(BIN)/python
	@echo "installing the daemon and its embedded database into $(VENV) (requirements/embedded.txt)"
	$(PIP_INSTALL) --require-hashes -r requirements/embedded.txt
	$(install-project)
	@touch $@

$(VENV)/.installed-dev: requirements/dev.txt setup.py setup.cfg | $(BIN)/python
	@echo "installing the development tools into $(VENV) (requirements/dev.txt)"
	$(PIP_INSTALL) --require-hashes -r requirements/dev.txt
	$(install-project)
	@touch $@ $(VENV)/.installed-embedded

install: $(VENV)/.installed-dev

# A first run writes a development .env (random JWT_SECRET, embedded database).
.env: | $(BIN)/python
	@$(BIN)/python -c "import secrets; print('NODE_ENV=development'); print('JWT_SECRET=' + secrets.token_urlsafe(48))" > .env
	@echo "wrote .env for local development (NODE_ENV=development, a random JWT_SECRET, embedded database)"

run: $(VENV)/.installed-embedded .env
	$(BIN)/twistd --nodaemon --pidfile= worknet-rpc

lint: install
	$(BIN)/ruff check worknet twisted tests bench
	$(BIN)/mypy worknet
	$(BIN)/hadolint Dockerfile

# package-lock.json as committed, nothing else (npm ci fails if it disagrees with package.json).
node-deps: tests/node/node_modules/.installed
tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# the client package's own dependencies, exactly as locked (clients/node/package-lock.json)
node-client: clients/node/node_modules/.installed
clients/node/node_modules/.installed: clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Four pytest workers (pytest-xdist), one test file each at a time, the slowest files first
# (tests/conftest.py SLOWEST_FIRST): much of a test's time is spent waiting on daemons, databases and
# deadlines, so four keep two cores busy where two left a third of them idle. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 4
PYTEST_DIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)
test: install lint node-deps node-client
	$(BIN)/pytest $(PYTEST_DIST) $(PYTEST_ARGS)

# The in-process tier alone, for the edit-test loop: every test not marked `process` (tests/conftest.py), i.e.
# the daemon's service tree called in the test process, not a twistd, TLS, --workers or Node client test.
check: install
	$(BIN)/pytest $(PYTEST_DIST) -m "not process" $(PYTEST_ARGS)

# The long fuzz run (the short one is part of `make test`): FUZZ_CASES hostile bodies against a real daemon.
FUZZ_CASES ?= 100000
fuzz: install
	FUZZ_CASES=$(FUZZ_CASES) $(BIN)/pytest -q -s -p no:cacheprovider tests/fuzz
# Rewrites every lock file from setup.cfg / requirements/*.in / package.json.
# Existing pins are kept (new dependencies are added at their newest version);
# `make lock UPGRADE=all` moves everything to the newest releases, `make lock UPGRADE=twisted` one package.
# dev.txt (every extra) is resolved first; embedded.txt and base.txt start from its pins, so the three agree.
$(LOCK_VENV)/bin/pip-compile: requirements/tools.txt
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install $(PIP_FLAGS) --require-hashes -r requirements/tools.txt
	@touch $@

lock: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE) $(UPGRADE_FLAGS) --all-extras -o requirements/dev.txt setup.cfg requirements/build.in
	cp requirements/dev.txt requirements/embedded.txt
	$(PIP_COMPILE) --extra embedded -o requirements/embedded.txt setup.cfg requirements/build.in
	cp requirements/dev.txt requirements/base.txt
	$(PIP_COMPILE) -o requirements/base.txt setup.cfg requirements/build.in
	$(PIP_COMPILE) $(UPGRADE_FLAGS) -o requirements/tools.txt requirements/tools.in
	@for d in $(NODE_PACKAGES); do (cd $$d && npm install --package-lock-only --no-audit --no-fund --loglevel=error) || exit 1; done

# Loads the demo marketplace into the daemon started by `make run` (DEMO_URL to aim elsewhere).
DEMO_URL ?= http://127.0.0.1:8000/RPC2
demo: $(VENV)/.installed-embedded
	$(BIN)/python -m worknet.demo --url $(DEMO_URL)

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Ten minutes of a marketplace mix (16 client threads) on one daemon and its embedded database;
# writes bench/soak.md and bench/soak.png and fails when a target is not met.
soak: install
	$(BIN)/python -m bench.soak --minutes 10 $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) var rpc_server.log* tests/node/node_modules clients/node/node_modules \
		.pytest_cache .mypy_cache .ruff_cache
