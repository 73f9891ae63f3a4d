# The two commands: `make run` (the demo) and `make test` (the whole suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUB_PORT ?= 8000
export UPSTREAM_URL ?= http://127.0.0.1:$(STUB_PORT)
export REDIS_URL ?= memory://
# The demo's admin port listens on loopback only, so purge works there without a token.
export SIDECAR_ADMIN_HOST ?= 127.0.0.1

.PHONY: install run test suite lint lock bench bench-workload clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(VENV)/.installed

# Reinstalls only when the dependencies change. Runtime dependencies come from the hashed
# requirements.lock, exactly as the Dockerfile installs them, so the demo and the tests run
# the versions that ship; the dev tools (pyproject's `dev` extra) are added around them and
# pip does not move an already-satisfied locked version.
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes --only-binary=:all: --no-deps -r requirements.lock
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	touch $@

# Refresh requirements.lock from pyproject's dependencies (newest versions the specifiers
# allow; needs the index), then run tests/test_dockerfile.py, which checks it.
lock: $(BIN)/python
	$(BIN)/pip install --quiet 'pip-tools>=7'
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

# Stand-in identity service on $(STUB_PORT), the sidecar on 8080 (admin 9090) in front.
run: install
	@STUB_PORT=$(STUB_PORT) $(BIN)/python -m upstream_stub & stub=$$!; \
	trap 'kill $$stub 2>/dev/null' EXIT INT TERM; \
	SIDECAR_CONFIG=$${SIDECAR_CONFIG:-config/routes.yaml} $(BIN)/python -m sidecar

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install
	@command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server"; exit 1; }
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The suite alone, e.g. on another Python: `make suite PY=python3.13 VENV=.venv-3.13`.
suite: install
	@command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server"; exit 1; }
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench.run

# A seeded clinical trace replayed per-credential and shared (bench/workload.py; minutes).
bench-workload: install
	@command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server"; exit 1; }
	$(BIN)/python -m bench.workload

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .ruff_cache .pytest_cache *.egg-info
