# Two commands set everything up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The oldest supported redis-py (pyproject's lower bound) gets a venv of its own: `make test` runs the
# routing, registry, cluster and chaos suites there too.
OLDEST       ?= .venv-oldest
OLDEST_BIN   := $(OLDEST)/bin
OLDEST_STAMP := $(OLDEST)/.installed
OLDEST_REDIS := redis[hiredis]==5.2.1
OLDEST_TESTS := tests/test_routing.py tests/test_routing_pubsub.py tests/test_client.py tests/test_instance.py \
                tests/test_registry.py tests/test_registry_leases.py tests/test_registry_races.py \
                tests/test_chaos_redis.py tests/test_connection.py tests/test_wire.py tests/test_cluster.py \
                tests/test_partitions.py tests/test_readme.py \
                tests/test_link_health.py tests/test_connection_faults.py tests/test_signing.py \
                tests/test_stale_owner.py tests/test_lifecycle.py tests/test_placement.py tests/test_handoff.py

.PHONY: demo test test-fast test-oldest lint typecheck bench bench-quick constraints clean help

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
	$(BIN)/python -m pip install --quiet -e ".[cli,gateway,memory,nats,otel]" --group dev --group bench
	touch $(STAMP)

$(OLDEST_STAMP): pyproject.toml
	test -x $(OLDEST_BIN)/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST_BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(OLDEST_BIN)/python -m pip install --quiet -e ".[cli,gateway,memory,nats,otel]" --group dev --group bench "$(OLDEST_REDIS)"
	touch $(OLDEST_STAMP)

demo: $(STAMP)
	$(BIN)/resource-router demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck test-oldest
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST_BIN)/python -m pytest -q -p no:cacheprovider $(OLDEST_TESTS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -x -q -m "not slow and not chaos" $(PYTEST_ARGS)

bench: $(STAMP) $(OLDEST_STAMP)
	$(BIN)/python -m benchmarks.run --full

bench-quick: $(STAMP) $(OLDEST_STAMP)
	$(BIN)/python -m benchmarks.run --quick

# What the Docker image installs, pinned: the gateway extra's dependencies as pip resolves them now.
constraints: $(STAMP)
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report $(VENV)/report.json ".[gateway,nats]"
	$(BIN)/python docker/pin.py $(VENV)/report.json > docker/constraints.txt

clean:
	rm -rf $(VENV) $(OLDEST) build dist .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
