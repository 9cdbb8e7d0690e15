"""Fixtures shared by more than one folder of the suite (a folder's own live in its ``conftest.py``;
plain helpers in ``tests/support/``).

Redis for the suite, in order of preference:
1. ``REDIS_URL`` when set (the suite only uses fresh namespaces and never flushes a shared server);
2. a private ``redis-server`` started on a free port for the session;
3. a testcontainers Redis when Docker works.
Otherwise the session fails with a message saying how to get Redis. The header of the run says
which one it will be, and the summary at the end which one it was.

``backend_url`` runs a test on the real Redis and, as a second backend, on ``memory://``; the suites in
``CLUSTER_SUITES`` run a third time on a real Redis Cluster of three masters (``cluster_url``).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib import metadata

import pytest
import redis
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry, ServiceClient
from resource_router.settings import redact_url
from tests.support.redis_cluster import RedisCluster3
from tests.support.redis_server import RedisServer, redis_server_binary

#: The Redis the session used, for the summary at the end.
_USED: list[str] = []


def _redis_server_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "(version unknown)"
    version = next((part for part in out.split() if part.startswith("v=")), "v=?")
    return version[2:]


def _redis_plan() -> str:
    """Which Redis the ``redis_url`` fixture will use (the same order as the fixture)."""
    env = os.environ.get("REDIS_URL")
    if env:
        return f"REDIS_URL={redact_url(env)}"
    binary = redis_server_binary()
    if binary:
        return f"a private redis-server {_redis_server_version(binary)} ({binary}) on a free port"
    return "a testcontainers Redis (redis:7) if Docker works, else none (the Redis tests fail)"


#: Dependencies whose versions the header and the summary name (the oldest pass runs on their floors).
KEY_DEPENDENCIES = (
    "pydantic",
    "pydantic-settings",
    "fakeredis",
    "msgpack",
    "tenacity",
    "fastapi",
    "starlette",
    "uvicorn",
    "typer",
    "click",
)


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _versions() -> str:
    return ", ".join(f"{name} {_installed(name)}" for name in KEY_DEPENDENCIES)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"redis: {_redis_plan()}; memory:// (fakeredis with Lua) as the second backend",
        f"redis-py {redis.__version__}; {_versions()}",
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _USED:
        terminalreporter.write_line(f"redis used: {_USED[0]} (redis-py {redis.__version__})")
    terminalreporter.write_line(f"with {_versions()}")  # shown under -q too, unlike the header


def _testcontainers_url() -> tuple[str, object] | None:
    try:
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7")
        container.start()
    except Exception:
        return None
    host = container.get_container_host_ip()
    port = container.get_exposed_port(6379)
    return f"redis://{host}:{port}/0", container


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    env = os.environ.get("REDIS_URL")
    if env:
        _USED.append(f"{redact_url(env)} (REDIS_URL)")
        yield env
        return
    binary = redis_server_binary()
    if binary:
        server = RedisServer().start()
        _USED.append(f"{server.url} (private redis-server {_redis_server_version(binary)})")
        try:
            yield server.url
        finally:
            server.stop()
        return
    found = _testcontainers_url()
    if found is None:
        pytest.fail(
            "No Redis for the test suite: install redis-server (apt install redis-server), "
            "set REDIS_URL=redis://host:port/0, or make Docker available for testcontainers.",
            pytrace=False,
        )
    url, container = found
    _USED.append(f"{url} (testcontainers)")
    try:
        yield url
    finally:
        container.stop()  # type: ignore[attr-defined]


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test: tests never see each other's keys."""
    return "t" + uuid.uuid4().hex[:12]


#: Suites that run a third time, on a real 3-master Redis Cluster (``redis+cluster://``).
CLUSTER_SUITES = frozenset(
    {
        "tests.ownership.test_registry",
        "tests.ownership.test_registry_leases",
        "tests.ownership.test_registry_races",
        "tests.routing.test_exact_routing",
        "tests.transport.test_hub",
        "tests.routing.test_client",
        "tests.routing.test_instance",
        "tests.routing.test_lifecycle",
        "tests.routing.test_notices",
        "tests.placement.test_activation",
        "tests.placement.test_handoff",
        "tests.state.test_redis_state",
    }
)


#: Suites whose ``registry`` fixture runs with 1 partition and with 16.
PARTITION_SUITES = frozenset({"tests.ownership.test_registry", "tests.ownership.test_registry_leases"})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``backend_url``: the real Redis and memory://, plus a Redis Cluster for ``CLUSTER_SUITES``;
    ``partitions``: 1, and 16 too for the ``registry`` fixture of ``PARTITION_SUITES``."""
    module = metafunc.module.__name__
    if "backend_url" in metafunc.fixturenames:
        backends = ["redis", "memory"]
        if module in CLUSTER_SUITES:
            backends.append("cluster")
        metafunc.parametrize("backend_url", backends, indirect=True)
    if "registry" in metafunc.fixturenames and module in PARTITION_SUITES:
        counts = [1] if metafunc.definition.get_closest_marker("one_partition") else [1, 16]
        metafunc.parametrize("partitions", counts, ids=[f"p{n}" for n in counts])


@pytest.fixture
def partitions() -> int:
    return 1


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A real Redis Cluster of three masters for the session (started from the redis-server binary)."""
    if not redis_server_binary():
        pytest.skip("a Redis Cluster needs redis-server on PATH")
    cluster = RedisCluster3().start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    if request.param == "redis":
        return redis_url
    if request.param == "cluster":
        url: str = request.getfixturevalue("cluster_url")
        return url
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def metrics_registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def client(backend_url: str, namespace: str, metrics_registry: CollectorRegistry) -> AsyncIterator[ServiceClient]:
    async with ServiceClient(backend_url, namespace=namespace, metrics_registry=metrics_registry) as c:
        yield c


@pytest.fixture
async def real_client(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> AsyncIterator[ServiceClient]:
    """A client on ``redis_url``, a real Redis (``client`` runs on every backend of ``backend_url``)."""
    async with ServiceClient(redis_url, namespace=namespace, metrics_registry=metrics_registry) as c:
        yield c


@pytest.fixture
async def registry(
    backend_url: str, namespace: str, metrics_registry: CollectorRegistry, partitions: int
) -> AsyncIterator[ResourceRegistry]:
    reg = ResourceRegistry(backend_url, namespace=namespace, partitions=partitions, metrics_registry=metrics_registry)
    try:
        yield reg
    finally:
        await reg.aclose()


@pytest.fixture
async def real_registry(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> AsyncIterator[ResourceRegistry]:
    reg = ResourceRegistry(redis_url, namespace=namespace, metrics_registry=metrics_registry)
    try:
        yield reg
    finally:
        await reg.aclose()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill, pause and restart."""
    if not redis_server_binary():
        pytest.skip("chaos tests need redis-server on PATH")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
