# Two commands set everything up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck bench bench-quick constraints clean help

help:
	@echo "make demo         run the demo (embedded memory:// unless RESOURCE_ROUTER_REDIS_URL is set)"
	@echo "make test         lint, type-check and run the whole suite against a real Redis"
	@echo "make bench        full benchmark suite (tables, JSON, plots in benchmarks/results/)"
	@echo "make bench-quick  the same, bounded to well under a minute"
	@echo "make constraints  re-pin docker/constraints.txt (the image's dependencies) from pyproject.toml"

# The package with every extra (memory:// for the demo and tests), plus the dev and bench dependency
# groups (pip >= 25.1 installs PEP 735 groups).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e ".[cli,gateway,memory]" --group dev --group bench
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/resource-router demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -x -q -m "not slow and not chaos" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

# What the Docker image installs, pinned: the gateway extra's dependencies as pip resolves them now.
constraints: $(STAMP)
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report $(VENV)/report.json ".[gateway]"
	$(BIN)/python docker/pin.py $(VENV)/report.json > docker/constraints.txt

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
