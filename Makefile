# The two set-up commands of the README work on a fresh machine (Python 3.11 + pip + make):
#   make demo   - set up, then run the proxy end to end on its embedded defaults
#   make test   - set up, then run the whole test suite (what .ci/run runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

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

bench: $(STAMP)
	$(BIN)/python -m bench.continued_turn --runs 5 --write BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
