"""A background sweeper: periodically cleans up instances whose lease ran out.

Any number of sweepers may run at once (in instances, router replicas, or a dedicated process):
the sweep script is atomic and does the cleanup, and writes its audit record, exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from resource_router.errors import ResourceRouterError
from resource_router.observability.logs import get_logger
from resource_router.ownership.registry import ResourceRegistry
from resource_router.transport.tasks import stop_task

logger = get_logger(__name__)

__all__ = ["Sweeper"]


class Sweeper:
    """Run ``registry.sweep`` for some services (or all, when ``services`` is None) every ``interval``."""

    def __init__(
        self,
        registry: ResourceRegistry,
        *,
        services: Sequence[str] | None = None,
        interval: float = 1.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.registry = registry
        self.services = list(services) if services is not None else None
        self.interval = interval
        self.swept_instances = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def run_once(self) -> dict[str, dict[str, list[str]]]:
        if self.services is None:
            result = await self.registry.sweep_all()
        else:
            result = {}
            for name in self.services:
                swept = await self.registry.sweep(name)
                if swept:
                    result[name] = swept
        self.swept_instances += sum(len(v) for v in result.values())  # their gauges went with the sweep
        return result

    async def _loop(self) -> None:
        while not self._stopping:  # checked too: a cancellation swallowed below must not keep it going
            try:
                await self.run_once()
            except ResourceRouterError as exc:
                logger.warning("sweep.failed", error=str(exc), operation="sweep")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="resource-router-sweeper")

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._task)
        self._task = None

    async def __aenter__(self) -> Sweeper:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
