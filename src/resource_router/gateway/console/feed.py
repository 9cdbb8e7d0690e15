"""The console's live feed: a service's ownership events as server-sent events (``text/event-stream``).

The events come from the library's follower (``EventLog.follow``, ``XREAD BLOCK`` on the service's
audit streams), the same that ``resource-router events --follow`` prints. Each SSE message carries the
event's stream id as its ``id``: a browser that reconnects sends it back (``Last-Event-ID``) and the
feed resumes right after it, so a stream may end at any time without losing an event. A stream ends
by itself after ``lifetime`` seconds, and at once when the replica begins to shut down (its graceful
shutdown waits for open requests: never long for these); while no event comes, a comment goes out
every ``keepalive`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from resource_router.errors import InvalidRequestError, ResourceRouterError
from resource_router.models import OwnershipEvent
from resource_router.observability.logs import get_logger
from resource_router.ownership.registry import ResourceRegistry
from resource_router.transport.tasks import stop_task

__all__ = ["SSE_MEDIA_TYPE", "event_stream", "resume_point"]

logger = get_logger(__name__)

SSE_MEDIA_TYPE = "text/event-stream"
_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
_QUEUE_LIMIT = 1000


def resume_point(last_event_id: str | None) -> str | None:
    """The stream id to resume after (from ``Last-Event-ID``), None for a fresh feed; a malformed id
    is ``InvalidRequestError`` (400)."""
    if last_event_id is None or last_event_id == "":
        return None
    if not _STREAM_ID.fullmatch(last_event_id):
        raise InvalidRequestError(
            f"Last-Event-ID must be a stream id like 1700000000000-0, not {last_event_id[:40]!r}",
            field="Last-Event-ID",
        )
    return last_event_id


def _message(event: OwnershipEvent) -> bytes:
    data = json.dumps(event.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.stream_id}\nevent: ownership\ndata: {data}\n\n".encode()


async def event_stream(
    registry: ResourceRegistry,
    service_name: str,
    *,
    resume_after: str | None,
    recent: int,
    lifetime: float,
    keepalive: float,
    closing: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The SSE body: the ``recent`` last events first (a fresh feed only), then every new one, until
    ``lifetime`` has passed or ``closing`` is set (the replica is shutting down)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime
    yield b"retry: 1000\n\n"  # reconnect after a second when the stream ends
    since = resume_after
    if since is None:
        try:
            backlog = await registry.events.recent(service_name, recent)
        except Exception as exc:
            yield _failure(service_name, exc)
            return
        for event in backlog:
            yield _message(event)
        since = backlog[-1].stream_id if backlog and backlog[-1].stream_id else "$"
    queue: asyncio.Queue[OwnershipEvent | Exception] = asyncio.Queue(_QUEUE_LIMIT)

    async def pump() -> None:
        try:
            async for event in registry.events.follow(service_name, since=since, block_ms=1000):
                await queue.put(event)
        except Exception as exc:
            await queue.put(exc)

    task = loop.create_task(pump())
    stopping = loop.create_task(closing.wait())
    try:
        while (left := deadline - loop.time()) > 0 and not closing.is_set():
            getter = loop.create_task(queue.get())
            done, _ = await asyncio.wait(
                {getter, stopping}, timeout=min(keepalive, left), return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()  # nothing is taken from the queue by a cancelled get
                if not closing.is_set():
                    yield b": keepalive\n\n"
                continue
            item = getter.result()
            if isinstance(item, Exception):
                yield _failure(service_name, item)
                return
            yield _message(item)
    finally:
        await stop_task(stopping)
        await stop_task(task)


def _failure(service_name: str, exc: Exception) -> bytes:
    """The ``feed-error`` message that ends a feed whose reads failed (the browser reconnects)."""
    logger.warning("console.feed_failed", service_name=service_name, error=f"{type(exc).__name__}: {exc}")
    detail: dict[str, Any] = (
        exc.to_dict() if isinstance(exc, ResourceRouterError) else {"type": type(exc).__name__, "message": "internal"}
    )
    return f"event: feed-error\ndata: {json.dumps(detail)}\n\n".encode()
