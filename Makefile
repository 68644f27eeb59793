# The two set-up commands: `make dev` and `make test`. Both build .venv first,
# with exactly the versions in uv.lock (what CI tested).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# uv itself, pinned, from PyPI, in a directory of its own: `uv sync` removes
# from .venv whatever the lock does not list, so it cannot live there.
UV_VERSION := 0.13.9
TOOLS := .venv-tools
UV_STAMP := $(TOOLS)/.uv-$(UV_VERSION)
# Into .venv, on $(PYTHON) (never an interpreter uv would download).
UV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(TOOLS)/bin/uv

.PHONY: dev test install lock lint format bench clean

# uv is one binary: pip --target is enough (a venv's own pip costs ~5 s more);
# where $(PYTHON) has no usable pip, a venv of its own.
$(UV_STAMP):
	rm -rf $(TOOLS)
	$(PYTHON) -m pip install --quiet --root-user-action=ignore --target $(TOOLS) \
	    uv==$(UV_VERSION) 2>/dev/null \
	  || { rm -rf $(TOOLS) && $(PYTHON) -m venv $(TOOLS) \
	       && $(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION); }
	$(TOOLS)/bin/uv --version
	touch $(UV_STAMP)

# --locked: install the lock as it is (editable project, test extra), and fail
# instead of re-resolving if pyproject.toml changed without `make lock`.
# --compile-bytecode: .pyc files now, as pip wrote them; uv otherwise leaves them
# to the first import, and where PYTHONDONTWRITEBYTECODE is set (this machine,
# the image) every process would compile its imports again (~4 s CPU each).
$(STAMP): pyproject.toml uv.lock $(UV_STAMP)
	$(UV) sync --quiet --locked --compile-bytecode --extra test --python $(PYTHON) \
	  || { echo 'uv sync failed; if uv.lock is out of date with pyproject.toml, run `make lock`.' >&2; exit 1; }
	touch $(STAMP)

install: $(STAMP)

## Re-resolve every dependency to its newest allowed version and rewrite uv.lock
## (`.venv-tools/bin/uv lock` alone re-locks keeping the other pins).
lock: $(UV_STAMP)
	$(UV) lock --upgrade --python $(PYTHON)

## Run API + worker on the embedded default (SQLite, filesystem broker, local disk).
dev: $(STAMP)
	$(BIN)/bff dev

## The whole suite. BFF_REQUIRE_SERVICES=1 turns "skip: no Postgres/Redis" into failures.
## Most of its time is spent waiting on processes (workers, recoveries), so it
## runs on TEST_WORKERS pytest-xdist workers (each starts the stacks it needs;
## 0: in this process). worksteal: a worker that runs dry takes tests queued on
## the other, so a few minute-long fault tests do not leave one worker idle.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(TOOLS) var .pytest_cache
