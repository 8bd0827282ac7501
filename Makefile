# The two set-up commands of the README work on a fresh machine (Python 3.11 + pip + make):
#   make demo   - set up, then run the proxy end to end on its embedded defaults
#   make test   - set up, then run the whole test suite with coverage (what .ci/run runs)
#
# Every environment is installed from uv.lock (exact versions, hashes), so every machine runs the
# same code; pyproject.toml keeps only lower bounds for people who install the package into an
# environment of their own. `make lock` refreshes the lock; `make test-latest` and
# `make test-lowest` run the suite against the newest and the lowest versions pyproject allows.
# uv itself comes from PyPI through pip, pinned here.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV ?= .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(BIN)/python

.PHONY: demo test lint typecheck lock test-latest test-lowest bench opencode claude postgres clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

# --inexact: keep uv itself, which the lock does not list.
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --quiet --frozen --inexact --extra test --no-build-isolation
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/acp-proxy demo

# Coverage includes the `acp-proxy serve` / `attach` subprocesses the integration tests start
# (coverage's `patch = subprocess`, see pyproject.toml); the floor is `fail_under` there.
test: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Re-resolve every dependency (runtime, test, and the build backend) to its newest allowed
# version and rewrite uv.lock. Commit it together with a green `make test`.
lock: $(UV)
	$(UV) lock --upgrade

# The suite against the newest release of every dependency (not the lock): how the next
# breakage is found before it lands.
test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	.venv-latest/bin/python -m pip list --format=freeze | grep -iE '^(anyio|msgspec|structlog|aiosqlite|trio|pytest)=='
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# The suite against the lowest version of each direct dependency that pyproject.toml allows.
test-lowest: $(UV)
	$(UV) pip compile pyproject.toml --extra test --resolution lowest-direct \
		--python-version 3.11 --no-header --quiet -o .venv-lowest.txt
	$(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install --quiet -r .venv-lowest.txt
	.venv-lowest/bin/python -m pip install --quiet --no-deps -e .
	.venv-lowest/bin/python -m pip list --format=freeze | grep -iE '^(anyio|msgspec|structlog|aiosqlite|trio|pytest)=='
	.venv-lowest/bin/python -m pytest $(PYTEST_ARGS)

# Every benchmark, each writing its section of BENCHMARKS.md (about ten minutes; section 9
# needs `make opencode`, section 14 `make claude` first, each skipped without it; section 9 draws
# its figure with matplotlib, the `bench` extra; section 12 measures the fake agent without it).
BENCHES := continued_turn restore replay startup overhead throughput bytes_per_turn memory \
	opencode_turn concurrency agent_memory postgres claude_turn fuzz_campaign bridge_startup \
	workspace_first_turn preopen

bench: $(STAMP)
	$(UV) sync --quiet --frozen --inexact --extra test --extra bench --no-build-isolation
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b --write BENCHMARKS.md || status=1; done; \
	$(BIN)/python -m bench.concurrency --think-ms 500 --write BENCHMARKS.md || status=1; \
	$(BIN)/python -m bench.density --agent fake --conversations 20 --per-agent 1,4,16,32 \
		--max-processes 6 --write BENCHMARKS.md || status=1; \
	$(BIN)/python -m bench.density --agent opencode --conversations 20 --per-agent 1,4,16,32 \
		--max-processes 4 --write BENCHMARKS.md || status=1; \
	exit $${status:-0}

# PostgreSQL server binaries for the PostgreSQL store tests and bench section 13 (Debian's
# package; the tests start their own throwaway server and skip, saying why, without it).
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ apt-get update && apt-get install -y --no-install-recommends postgresql; }

# The real opencode agent (npm opencode-ai, pinned) for tests/opencode and bench section 9.
opencode:
	bash scripts/install-opencode.sh

# The real claude-agent-acp (npm @zed-industries/claude-agent-acp, pinned) for tests/claude and
# bench section 12.
claude:
	bash scripts/install-claude-agent.sh

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest .venv-lowest.txt .pytest_cache .ruff_cache \
		.mypy_cache .coverage .coverage.*
