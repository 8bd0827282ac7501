# The two set-up commands of the README work on a fresh machine (Python 3.11 + pip + make):
#   make demo   - set up, then run the proxy end to end on its embedded defaults
#   make test   - set up, then run the whole test suite (what .ci/run runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench opencode claude clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/acp-proxy demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every benchmark, each writing its section of BENCHMARKS.md (about ten minutes; section 9
# needs `make opencode` and section 12 `make claude` first; each is skipped without it).
BENCHES := continued_turn restore replay startup overhead throughput bytes_per_turn memory \
	opencode_turn concurrency claude_turn

bench: $(STAMP)
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b --write BENCHMARKS.md || status=1; done; \
	$(BIN)/python -m bench.concurrency --think-ms 500 --write BENCHMARKS.md || status=1; \
	exit $${status:-0}

# The real opencode agent (npm opencode-ai, pinned) for tests/opencode and bench section 9.
opencode:
	bash scripts/install-opencode.sh

# The real claude-agent-acp (npm @zed-industries/claude-agent-acp, pinned) for tests/claude and
# bench section 12.
claude:
	bash scripts/install-claude-agent.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
