# The commands that matter on a fresh machine (see README):
#   make demo   - create .venv from the lock, run the platform on the embedded local runtime
#   make test   - create .venv from the lock, run the whole test suite
#   make lock   - re-resolve requirements.lock after editing dependencies in pyproject.toml
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
LOCK    = requirements.lock
# The resolver lives in its own small venv so `make lock` works even when .venv is stale.
TOOLS   = .tools
UV_VERSION = 0.13.9
# The lock is resolved for the CI platform: CPython 3.11 on x86-64 Linux (hashes cover every wheel of a version).
LOCK_FLAGS = --extra all --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes

.PHONY: demo test lint typecheck schemas bench clean venv lock

venv: $(STAMP)

# Exact versions and hashes from the lock, then the project itself without dependencies; the check
# fails (exit 2) when pyproject asks for something the lock does not hold: run `make lock`.
$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (mlp needs Python 3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python scripts/check_lock.py
	@touch $(STAMP)

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

lock: $(TOOLS)/bin/uv
	$(TOOLS)/bin/uv pip compile pyproject.toml $(LOCK_FLAGS) --quiet --custom-compile-command "make lock" -o $(LOCK)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/ruff check mlp tests benchmarks scripts
	$(BIN)/ruff format --check --quiet mlp tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check mlp tests benchmarks scripts
	$(BIN)/ruff format --check mlp tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/mlp schemas export --out schemas

bench: $(STAMP)
	$(BIN)/python benchmarks/validate.py

clean:
	rm -rf $(VENV) $(TOOLS) .mlp .pytest_cache .mypy_cache .ruff_cache
