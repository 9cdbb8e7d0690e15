# Two commands set everything up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The oldest supported versions get a venv of their own: every dependency of the package and of its
# extras pinned to its declared lower bound (tests/floors.py writes the constraints from pyproject.toml;
# redis-py 5.2.1 among them). `make test` runs the routing, registry, cluster, chaos, command-line,
# gateway and quiet-start suites there too.
OLDEST       ?= .venv-oldest
OLDEST_BIN   := $(OLDEST)/bin
OLDEST_STAMP := $(OLDEST)/.installed
FLOORS       := $(OLDEST)/floors.txt
OLDEST_TESTS := tests/routing/test_exact_routing.py tests/transport/test_hub.py tests/routing/test_client.py \
                tests/routing/test_instance.py tests/ownership/test_registry.py tests/ownership/test_registry_leases.py \
                tests/ownership/test_registry_races.py tests/system/test_chaos_redis.py tests/transport/test_connection.py \
                tests/transport/test_wire.py tests/system/test_cluster.py tests/ownership/test_partitions.py \
                tests/system/test_readme.py tests/transport/test_link_health.py tests/transport/test_connection_faults.py \
                tests/routing/test_signing.py tests/routing/test_stale_owner.py tests/routing/test_lifecycle.py \
                tests/placement/test_activation.py tests/placement/test_handoff.py tests/cli/test_commands.py \
                tests/gateway/test_app.py tests/gateway/test_route.py tests/system/test_quiet_start.py \
                tests/system/test_floors.py tests/state/test_redis_state.py tests/state/test_codec.py

# A venv is resolved again, every dependency upgraded to the newest release its range allows
# (`--upgrade-strategy eager`), when pyproject.toml changed or its last resolution is older than
# RESOLVE_MINUTES (12 h): the newest pass runs on today's releases, not on those of the day .venv was made.
RESOLVE_MINUTES ?= 720
PIP_RESOLVE     := --quiet --upgrade --upgrade-strategy eager
expired          = $(if $(shell find $(1) -mmin +$(RESOLVE_MINUTES) 2>/dev/null),FORCE)

.PHONY: FORCE demo test test-fast test-oldest lint typecheck bench bench-quick constraints clean help

help:
	@echo "make demo         run the demo (embedded memory:// unless RESOURCE_ROUTER_REDIS_URL is set)"
	@echo "make test         lint, type-check and run the whole suite against a real Redis"
	@echo "make bench        full benchmark suite (tables, JSON, plots in benchmarks/results/)"
	@echo "make bench-quick  the same, bounded to well under a minute"
	@echo "make constraints  re-pin docker/constraints.txt (the image's dependencies) from pyproject.toml"

# The package with every extra (memory:// for the demo and tests), plus the dev and bench dependency
# groups (pip >= 25.1 installs PEP 735 groups).
$(STAMP): pyproject.toml $(call expired,$(STAMP))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install $(PIP_RESOLVE) -e ".[cli,gateway,memory,nats,otel,postgres]" --group dev --group bench
	touch $(STAMP)

# The floors pin the package's dependencies; what they depend on resolves to the newest it allows.
$(OLDEST_STAMP): pyproject.toml tests/floors.py $(call expired,$(OLDEST_STAMP))
	test -x $(OLDEST_BIN)/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST_BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(OLDEST_BIN)/python tests/floors.py > $(FLOORS)
	$(OLDEST_BIN)/python -m pip install $(PIP_RESOLVE) -e ".[cli,gateway,memory,nats,otel,postgres]" --group dev --group bench \
		-c $(FLOORS)
	touch $(OLDEST_STAMP)

FORCE:

demo: $(STAMP)
	$(BIN)/resource-router demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck test-oldest
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)

# The last lines of both passes name the versions they ran on (redis-py, pydantic, fakeredis, fastapi, ...).
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
