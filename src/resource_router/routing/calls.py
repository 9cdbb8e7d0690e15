"""The call table of a client process: requests in flight, keyed by request id, and the one reply
channel ``{ns}:reply:{client_id}`` their answers arrive on (nats.py's request-reply, over Redis).

``send(call, target)`` encodes the request (sealed when signing is on), publishes it on the target's
channel and waits for its reply; None when nobody listens there. The caller's deadline
(``deadline.bounded`` around the whole call) ends the wait.

When the reply subscription is lost (the connection dropped, a health check found it dead, or Redis
disconnected a slow subscriber), every call waiting for a reply fails at once with
``RedisUnavailableError`` (``operation="reply"``, retryable) instead of waiting out its timeout. A
call made while the reply channel is being subscribed again waits for it (up to
``health_check_timeout``, within its own deadline) and then fails the same way rather than sending a
request whose reply could not arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from resource_router.errors import ProtocolError, RedisUnavailableError, ResourceRouterError
from resource_router.ids import RandomIds
from resource_router.observability.logs import LogThrottle, get_logger
from resource_router.observability.metrics import Metrics
from resource_router.routing.call import Call, Target
from resource_router.routing.protocol import Reply, decode_reply, encode_request
from resource_router.routing.signing import Signer
from resource_router.settings import RouterSettings
from resource_router.transport.hub import PubSubHub

__all__ = ["CallTable"]

logger = get_logger(__name__)


class CallTable:
    """Requests in flight and their reply channel (see the module docstring)."""

    def __init__(
        self, client_id: str, reply_channel: str, settings: RouterSettings, metrics: Metrics, signer: Signer | None
    ) -> None:
        self.client_id = client_id
        self.reply_channel = reply_channel
        self._settings = settings
        self._max_payload = settings.max_payload_bytes
        self._metrics = metrics
        self._signer = signer
        self._hub: PubSubHub | None = None
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._heard = asyncio.Event()  # set while the reply channel is subscribed
        self._id_prefix = client_id + ":"
        self._random_ids = RandomIds()
        self._drop_log = LogThrottle()

    # -- the reply channel -------------------------------------------------------------------------
    async def open(self, hub: PubSubHub) -> None:
        """Subscribe the reply channel on ``hub``."""
        await hub.subscribe(self.reply_channel, self._on_reply, self._on_reply_state)
        self._hub = hub
        if hub.heard(self.reply_channel):
            self._heard.set()

    async def close(self) -> None:
        """Fail the calls still waiting and unsubscribe."""
        hub, self._hub = self._hub, None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ResourceRouterError("the ServiceClient was closed while waiting for a reply"))
        if hub is not None:
            with contextlib.suppress(ResourceRouterError):
                await hub.unsubscribe(self.reply_channel, self._on_reply, self._on_reply_state)

    @property
    def listening(self) -> bool:
        """True while Redis has confirmed the reply channel on a live connection (replies can arrive)."""
        hub = self._hub
        return hub is not None and hub.heard(self.reply_channel)

    # -- sending -------------------------------------------------------------------------------------
    async def send(self, call: Call, target: Target) -> Reply | None:
        """Publish ``call`` to ``target`` and wait for the reply; None when nobody listens there.
        ``target.activate``: the instance may claim the resource (placement) if nobody owns it."""
        hub = self._hub
        if hub is None:
            raise RuntimeError("the ServiceClient is closed")
        loop = asyncio.get_running_loop()
        remaining = call.deadline - loop.time()
        if remaining <= 0:
            raise call.timeout_error()
        request_id = self._id_prefix + self._random_ids.next()  # unguessable: replies cannot be forged blind
        channel = call.sk.rpc_channel(target.instance_id)
        if call.span is not None:
            call.span.set_attribute("messaging.destination.name", channel)
            call.span.set_attribute("messaging.message.id", request_id)
        data = encode_request(
            request_id=request_id,
            reply_channel=self.reply_channel,
            service_name=call.sk.service_name,
            method=call.method,
            resource_id=call.resource_id,
            params=call.params,
            deadline=call.wall_deadline,
            trace_id=call.trace_id,
            max_bytes=self._max_payload,
            sent_at=None if self._signer is not None else time.time(),  # a seal carries its own ``ts``
            activate=target.activate,
            traceparent=call.traceparent,
        )
        if self._signer is not None:
            data = self._signer.seal(channel, data)
        if not self._heard.is_set():
            await self._wait_for_reply_channel(min(remaining, self._settings.health_check_timeout))
        fut: asyncio.Future[Reply] = loop.create_future()
        self._pending[request_id] = fut
        try:
            if not await hub.publish(channel, data):
                return None
            return await fut  # the call's one deadline (``bounded`` in the client) ends this wait
        finally:
            del self._pending[request_id]
            if fut.done() and not fut.cancelled():
                fut.exception()  # seen: a failure set while the call ended another way is not "unretrieved"

    async def _wait_for_reply_channel(self, seconds: float) -> None:
        """Wait for the reply channel to be subscribed again; ``RedisUnavailableError`` after ``seconds``."""
        try:
            await asyncio.wait_for(self._heard.wait(), seconds)
        except TimeoutError:
            raise RedisUnavailableError(
                "the reply channel is not subscribed (its connection is being re-established): retry",
                operation="reply",
            ) from None

    # -- receiving -----------------------------------------------------------------------------------
    def _on_reply(self, data: bytes) -> None:
        if self._signer is not None:
            verdict = self._signer.verify(self.reply_channel, data, replay=False)
            if isinstance(verdict, str):  # never accepted, whatever it claims
                self._dropped(verdict, "the reply is not authenticated")
                return
        try:
            reply = decode_reply(data)
        except ProtocolError as exc:
            self._dropped(exc.reason, exc.message)
            fut = self._pending.get(exc.request_id) if exc.request_id else None
            if fut is not None and not fut.done():
                fut.set_exception(ResourceRouterError(f"malformed reply: {exc.message}"))
            return
        fut = self._pending.get(reply.request_id)
        if fut is None or fut.done():
            self._metrics.dropped_messages.labels("late").inc()
            return
        fut.set_result(reply)

    def _on_reply_state(self, heard: bool) -> None:
        """The reply subscription dropped: no reply can arrive for calls in flight; fail them now."""
        if heard:
            self._heard.set()
            return
        self._heard.clear()
        if not self._pending:
            return
        pending = [fut for fut in self._pending.values() if not fut.done()]
        logger.warning("route.reply_channel_lost", client_id=self.client_id, failed_calls=len(pending))
        for fut in pending:
            fut.set_exception(
                RedisUnavailableError(
                    "the connection carrying replies was lost while waiting; the request may or may not "
                    "have run: retry if it is safe to",
                    operation="reply",
                )
            )

    def _dropped(self, reason: str, error: str) -> None:
        self._metrics.dropped_messages.labels(reason).inc()
        suppressed = self._drop_log.allow()  # rate-limited: anyone may publish garbage on the channel
        if suppressed is not None:
            logger.warning(
                "route.reply_dropped", reason=reason, error=error, client_id=self.client_id, suppressed=suppressed
            )
