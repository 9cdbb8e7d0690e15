"""One routed call on its way: what the caller asked for, its deadline, and where it is sent next."""

from __future__ import annotations

import time
from typing import Any

from resource_router.errors import RouteTimeoutError
from resource_router.ownership.keys import ServiceKeys
from resource_router.routing.protocol import Reply

__all__ = ["Call", "Target"]


class Call:
    """What one call needs on its way (kept on one object rather than passed as ten arguments)."""

    __slots__ = (
        "deadline",
        "method",
        "params",
        "resource_id",
        "seconds",
        "sk",
        "span",
        "trace_id",
        "traceparent",
        "wait_for_owner",
        "wall_deadline",
    )

    def __init__(
        self,
        sk: ServiceKeys,
        method: str,
        params: Any,
        resource_id: str | None,
        trace_id: str,
        seconds: float,
        deadline: float,
        wait_for_owner: bool = False,
    ) -> None:
        self.sk = sk
        self.method = method
        self.params = params
        self.resource_id = resource_id
        self.trace_id = trace_id
        self.seconds = seconds  # the caller's timeout
        self.deadline = deadline  # loop time
        self.wall_deadline = time.time() + seconds  # sent to the instance (UNIX time)
        self.wait_for_owner = wait_for_owner  # keep resolving (and activating) until the deadline
        self.span: Any = None  # the OpenTelemetry ``call`` span (None without the otel extra)
        self.traceparent: str | None = None  # its W3C trace context, sent in the envelope

    @property
    def service_name(self) -> str:
        return self.sk.service_name

    def timeout_error(self) -> RouteTimeoutError:
        return RouteTimeoutError(f"no reply within {self.seconds:g}s", timeout=self.seconds)


class Target:
    """An instance a call is sent to, and what the caller knows of it."""

    __slots__ = ("activate", "fresh", "instance_id")

    def __init__(self, instance_id: str, *, fresh: bool, activate: bool = False) -> None:
        self.instance_id = instance_id
        #: named by Redis (or by a redirect) during this call, not by the owner cache
        self.fresh = fresh
        #: a placement volunteer asked to claim the resource (nobody owned it)
        self.activate = activate

    def served(self, reply: Reply) -> str:
        """The instance that answered (a redirected activation may have been served elsewhere)."""
        return reply.instance_id or self.instance_id
