"""How an instance answers: every reply is encoded here, sealed with the key its caller used (when
signing is on) and published without waiting on the caller's reply channel; every message that is
dropped instead is counted and logged here (rate-limited: anyone may publish garbage on a channel).
"""

from __future__ import annotations

import time
from typing import Any

from resource_router.errors import ProtocolError, ResourceRouterError
from resource_router.observability.logs import Logger, LogThrottle
from resource_router.observability.metrics import Metrics
from resource_router.routing.protocol import (
    Request,
    encode_error_reply,
    encode_not_owner_reply,
    encode_ok_reply,
)
from resource_router.routing.signing import Signer
from resource_router.transport.hub import PubSubHub

__all__ = ["Replies"]

_REPLY_KEYS_LIMIT = 10_000


class Replies:
    """The answers of one instance (see the module docstring). ``attach(hub)`` once subscribed."""

    def __init__(
        self, *, instance_id: str, metrics: Metrics, signer: Signer | None, max_payload: int, log: Logger
    ) -> None:
        self._iid = instance_id
        self._metrics = metrics
        self._signer = signer
        self._max_payload = max_payload
        self._log = log
        self._hub: PubSubHub | None = None
        self._reply_keys: dict[str, int] = {}  # reply channel -> number of the key its caller signs with
        self._drop_log = LogThrottle()

    def attach(self, hub: PubSubHub | None) -> None:
        self._hub = hub

    # -- answers -----------------------------------------------------------------------------------
    def ok(self, req: Request, result: Any, fencing_token: int | None) -> None:
        """The handler's result (an unencodable or oversized one becomes an error reply)."""
        self._send(
            req.reply_channel,
            encode_ok_reply(
                req.request_id,
                result,
                instance_id=self._iid,
                trace_id=req.trace_id,
                fencing_token=fencing_token,
                max_bytes=self._max_payload,
            ),
        )

    def error(self, req: Request, error: ResourceRouterError, fencing_token: int | None = None) -> None:
        self._send(
            req.reply_channel,
            encode_error_reply(
                req.request_id, error, instance_id=self._iid, trace_id=req.trace_id, fencing_token=fencing_token
            ),
        )

    def not_owner(self, req: Request, *, redirect: str | None, reason: str | None) -> None:
        self._send(
            req.reply_channel,
            encode_not_owner_reply(
                req.request_id, instance_id=self._iid, trace_id=req.trace_id, redirect=redirect, reason=reason
            ),
        )

    def invalid(self, exc: ProtocolError) -> None:
        """A request that could not be decoded but says where to answer: a 400 there."""
        assert exc.request_id is not None
        assert exc.reply_channel is not None
        self._send(
            exc.reply_channel,
            encode_error_reply(exc.request_id, exc.to_error(), instance_id=self._iid, trace_id=exc.trace_id),
        )

    def _send(self, channel: str, data: bytes) -> None:
        if self._signer is not None:  # answered with the key the caller signed with
            data = self._signer.seal(channel, data, key=self._reply_keys.get(channel, 0))
        hub = self._hub
        if hub is not None:
            hub.publish_nowait(channel, data)

    def note_key(self, channel: str, key: int) -> None:
        """Remember which of this instance's keys the (authenticated) caller behind ``channel`` signs
        with, to answer with it; only keys other than the first are kept (during a rotation)."""
        if not key and not self._reply_keys:
            return
        if key:
            if len(self._reply_keys) >= _REPLY_KEYS_LIMIT:
                self._reply_keys.clear()
            self._reply_keys[channel] = key
        else:
            self._reply_keys.pop(channel, None)

    # -- drops -------------------------------------------------------------------------------------
    def dropped(self, reason: str, error: str, **fields: Any) -> None:
        """Count a dropped message; log it (rate-limited)."""
        self._metrics.dropped_messages.labels(reason).inc()
        suppressed = self._drop_log.allow()
        if suppressed is not None:
            self._log.warning("route.dropped", reason=reason, error=error, suppressed=suppressed, **fields)

    def expired(self, req: Request) -> None:
        self._metrics.dropped_messages.labels("expired").inc()
        self._log.info(
            "route.expired",
            method=req.method,
            trace_id=req.trace_id,
            resource_id=req.resource_id,
            late_by_ms=round((time.time() - (req.deadline or 0.0)) * 1000.0, 3),
        )
