"""What one replica holds while it runs: a registry, a routing client and a sweeper.

None of it is state in the routing sense: ownership, liveness and audit all live in Redis, so any
replica answers any request and a replica can die at any moment without losing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from resource_router.errors import RedisUnavailableError, ResourceRouterError
from resource_router.observability.logs import get_logger
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.sweeper import Sweeper
from resource_router.state.redis_state import RedisStateStore
from resource_router.transport.connection import describe
from resource_router.transport.memory import is_memory_url

from .replica_metrics import get_gateway_metrics
from .replica_settings import GatewaySettings

if TYPE_CHECKING:
    from resource_router.routing.client import ServiceClient

logger = get_logger(__name__)

__all__ = ["GatewayState", "InFlight"]


class InFlight:
    """How many requests (HTTP and NATS) this process serves at once, bounded by ``limit``."""

    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def try_enter(self) -> bool:
        """Take a place; False when all ``limit`` places are taken (the caller answers 503)."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


class GatewayState:
    """The replica's handles on Redis. ``start``/``stop`` run in the app's lifespan."""

    def __init__(self, settings: GatewaySettings, *, metrics_registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics_registry = metrics_registry
        router = settings.router
        self.registry = ResourceRegistry(
            settings.redis_url,
            namespace=router.namespace,
            max_resources_per_instance=router.max_resources_per_instance,
            settings=router,
            metrics_registry=metrics_registry,
        )
        self.sweeper = Sweeper(self.registry, interval=settings.sweep_interval) if settings.sweep_interval > 0 else None
        #: resources' state, read only (``GET /v1/resources/{service}/{id}/state``)
        self.state_store = RedisStateStore().bind(self.registry)
        self.in_flight = InFlight(settings.max_in_flight)
        self._routed = get_gateway_metrics(metrics_registry).routed
        self._routed_children: dict[tuple[str, str], Any] = {}
        self._client: ServiceClient | None = None
        self._client_lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()
        #: Set when the replica begins to shut down: long-lived responses (the console's feeds) end.
        self.closing = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start the sweeper and the routing client. Redis being down is not fatal: ``/readyz``
        says 503 and the client is started on the first ``/v1/route`` once Redis is back."""
        self._loop = asyncio.get_running_loop()
        where = describe(self.registry.redis)
        logger.info(
            "gateway.start",
            redis=where,
            namespace=self.settings.namespace,
            sweeper=self.sweeper is not None,
            operation="start",
        )
        if is_memory_url(self.settings.redis_url):
            logger.warning(
                "gateway.memory_backend",
                message="serving the embedded memory:// store: it lives in this process only, so other "
                "replicas and instances cannot see it; set --redis or RESOURCE_ROUTER_REDIS_URL",
            )
        if self.sweeper is not None:
            self.sweeper.start()
        try:
            await self.client()
        except ResourceRouterError as exc:
            logger.warning("gateway.client_deferred", error=str(exc), operation="start")

    async def client(self) -> ServiceClient:
        """The replica's one routing client (one pub/sub connection), started on first use."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                from resource_router.routing.client import ServiceClient

                client = ServiceClient(
                    self.registry.redis,  # one connection pool per replica; the registry closes it
                    namespace=self.settings.namespace,
                    settings=self.settings.router,
                    metrics_registry=self.metrics_registry,
                )
                try:
                    await client.__aenter__()
                except ResourceRouterError:
                    raise
                except (OSError, ConnectionError) as exc:
                    raise RedisUnavailableError(
                        f"cannot start the routing client: {type(exc).__name__}: {exc}", operation="route"
                    ) from exc
                self._stack.push_async_exit(client.__aexit__)
                self._client = client
            return self._client

    def begin_shutdown(self) -> None:
        """Tell long-lived responses to end (safe from a signal handler or another thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self.closing.set)

    def count_routed(self, service_name: str, instance_id: str) -> None:
        """Count a routed call answered by ``instance_id`` (``ipc_gateway_routed_calls_total``)."""
        key = (service_name, instance_id)
        child = self._routed_children.get(key)
        if child is None:
            child = self._routed.labels(service_name, instance_id)
            if len(self._routed_children) < 4096:
                self._routed_children[key] = child
        child.inc()

    def routed_totals(self) -> list[tuple[str, str, float]]:
        """``(service_name, instance_id, calls)`` for every instance this replica routed calls to."""
        return [
            (sample.labels["service_name"], sample.labels["instance_id"], sample.value)
            for family in self._routed.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        ]

    async def ready(self) -> None:
        """Raise ``RedisUnavailableError`` unless Redis answers PING within ``ready_timeout`` and the
        routing client (once started) hears its reply channel."""
        try:
            async with asyncio.timeout(self.settings.ready_timeout):
                await self.registry.ping()
        except TimeoutError as exc:
            raise RedisUnavailableError(
                f"Redis did not answer PING within {self.settings.ready_timeout}s", operation="ping"
            ) from exc
        if self._client is not None and not self._client.listening:
            raise RedisUnavailableError(
                "the routing client's reply channel is not subscribed (its connection is being re-established)",
                operation="reply",
            )

    async def stop(self) -> None:
        """Stop the sweeper, close the client and the registry (after in-flight requests drained)."""
        if self.sweeper is not None:
            await self.sweeper.stop()
        try:
            await self._stack.aclose()
        except Exception as exc:  # closing must not hide the shutdown of the rest
            logger.warning("gateway.client_close_failed", error=f"{type(exc).__name__}: {exc}")
        self._client = None
        await self.registry.aclose()
        logger.info("gateway.stop", operation="stop")
