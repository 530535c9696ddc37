# WorkNet RPC -- the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint install node-deps node-client bench soak fuzz clean

$(BIN)/twistd: setup.py setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]' --config-settings editable_mode=compat
	@touch $@

install: $(BIN)/twistd

# A first run writes a development .env (random JWT_SECRET, embedded database).
.env:
	@$(BIN)/python -c "import secrets; print('NODE_ENV=development'); print('JWT_SECRET=' + secrets.token_urlsafe(48))" > .env
	@echo "wrote .env for local development (NODE_ENV=development, a random JWT_SECRET, embedded database)"

run: install .env
	$(BIN)/twistd --nodaemon --pidfile= worknet-rpc

lint: install
	$(BIN)/ruff check worknet twisted tests bench
	$(BIN)/mypy worknet
	$(BIN)/hadolint Dockerfile

node-deps:
	cd tests/node && npm install --no-package-lock --no-audit --no-fund --loglevel=error

# the client package's own dependencies, exactly as locked (clients/node/package-lock.json)
node-client: clients/node/node_modules/.installed
clients/node/node_modules/.installed: clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: install lint node-deps node-client
	$(BIN)/pytest $(PYTEST_ARGS)

# The long fuzz run (the short one is part of `make test`): FUZZ_CASES hostile bodies against a real daemon.
FUZZ_CASES ?= 100000
fuzz: install
	FUZZ_CASES=$(FUZZ_CASES) $(BIN)/pytest -q -s -p no:cacheprovider tests/fuzz

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Ten minutes of mixed load on one daemon (needs wrk); writes bench/soak.md and bench/soak.png.
soak: install
	$(BIN)/python -m bench.soak --minutes 10 $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var rpc_server.log* tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache
