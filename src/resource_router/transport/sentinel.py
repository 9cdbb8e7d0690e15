"""Redis Sentinel: ``redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/db]``.

``rediss+sentinel://`` talks TLS to the Sentinels and to the master. The user and password in the URL
are the master's; the Sentinels' own, when they have one, are the query parameters
``sentinel_username`` and ``sentinel_password`` (``?sentinel_password=...``). The other query
parameters go to the master's connections as in a ``redis://`` URL (``ssl_ca_certs=...``).

The client is redis-py's: every new connection asks the Sentinels where the master is now
(``SentinelConnectionPool``), so after a failover connections reach the new master. One addition:
a master name no Sentinel knows fails at once with ``InvalidRequestError`` naming it, where
redis-py would report it like a master that is down (``MasterNotFoundError``), which the library
retries as a passing failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aredis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from resource_router.errors import InvalidRequestError
from resource_router.observability.logs import get_logger
from resource_router.settings import redact_url
from resource_router.transport.retry import Backoff
from resource_router.transport.tasks import stop_task

__all__ = [
    "SENTINEL_SCHEMES",
    "SentinelPool",
    "SentinelTarget",
    "SwitchWatch",
    "master_name",
    "parse_sentinel_url",
    "sentinel_client",
    "sentinels_of",
]

logger = get_logger(__name__)

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_FORM = "redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/db]"
#: Query parameters that do not go to the master's connections.
_SENTINEL_PARAMS = frozenset({"sentinel_username", "sentinel_password"})
_INT_PARAMS = frozenset({"db"})


class SentinelTarget:
    """What a Sentinel URL names: the Sentinels, the master's name, and how to reach both."""

    __slots__ = ("db", "master", "master_kwargs", "sentinel_kwargs", "sentinels", "tls")

    def __init__(
        self,
        sentinels: list[tuple[str, int]],
        master: str,
        db: int,
        tls: bool,
        master_kwargs: dict[str, Any],
        sentinel_kwargs: dict[str, Any],
    ) -> None:
        self.sentinels = sentinels
        self.master = master
        self.db = db
        self.tls = tls
        self.master_kwargs = master_kwargs
        self.sentinel_kwargs = sentinel_kwargs

    def describe(self) -> str:
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"{scheme}://{hosts}/{self.master}/{self.db}"

    def identity(self) -> tuple[Any, ...]:
        user = self.master_kwargs.get("username")
        return ("sentinel", tuple(sorted(self.sentinels)), self.master, self.db, user, self.tls)


def _hosts(spec: str) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for part in spec.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequestError(f"invalid Sentinel address {part!r}: use {_FORM}", field="redis")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The target of a Sentinel URL; ``InvalidRequestError`` (field ``redis``) for a malformed one."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not segments or len(segments) > 2:
        raise InvalidRequestError(f"a Sentinel URL names its master: {_FORM} (got {redact_url(url)})", field="redis")
    master = segments[0]
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise InvalidRequestError(f"the database of a Sentinel URL is a number, not {segments[1]!r}", field="redis")
        db = int(segments[1])
    tls = parts.scheme.startswith("rediss")
    master_kwargs: dict[str, Any] = {"db": db}
    username, _, password = userinfo.partition(":")
    if username:
        master_kwargs["username"] = unquote(username)
    if password:
        master_kwargs["password"] = unquote(password)
    sentinel_kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _SENTINEL_PARAMS:
            sentinel_kwargs[key.removeprefix("sentinel_")] = value
        elif key in _INT_PARAMS:
            raise InvalidRequestError("the database of a Sentinel URL goes in its path: .../MASTER/db", field="redis")
        else:
            master_kwargs[key] = value
    if tls:
        master_kwargs["ssl"] = True
        sentinel_kwargs["ssl"] = True
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if key in master_kwargs:
                sentinel_kwargs.setdefault(key, master_kwargs[key])
    return SentinelTarget(_hosts(hosts), master, db, tls, master_kwargs, sentinel_kwargs)


class SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, telling an unknown master name from a master that is down."""

    async def get_master_address(self) -> Any:
        try:
            return await super().get_master_address()  # type: ignore[no-untyped-call]
        except MasterNotFoundError:
            if await self._nobody_knows():
                raise InvalidRequestError(
                    f"no Sentinel knows a master named {self.service_name!r}: check the name in the URL ({_FORM})",
                    field="redis",
                ) from None
            raise

    async def _nobody_knows(self) -> bool:
        """True when every Sentinel answered and none monitors a master of that name."""
        answered = 0
        for sentinel in self.sentinel_manager.sentinels:
            try:
                masters = await sentinel.sentinel_masters()
            except Exception:
                continue
            answered += 1
            if self.service_name in masters:
                return False
        return answered > 0 and answered == len(self.sentinel_manager.sentinels)


def sentinel_client(target: SentinelTarget, options: dict[str, Any], max_connections: int) -> aredis.Redis:
    """A client of the master ``target`` names; ``options`` are the library's client options."""
    sentinel_kwargs = {
        "protocol": 2,
        "decode_responses": False,
        "socket_connect_timeout": options.get("socket_connect_timeout"),
        "socket_timeout": options.get("socket_connect_timeout"),  # a Sentinel answers at once, or not at all
        **target.sentinel_kwargs,
    }
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs)
    client: aredis.Redis = sentinel.master_for(
        target.master,
        redis_class=aredis.Redis,
        connection_pool_class=SentinelPool,
        max_connections=max_connections,
        **options,
        **target.master_kwargs,
    )
    return client


def sentinels_of(client: aredis.Redis) -> list[aredis.Redis] | None:
    """The Sentinel clients behind a client made by ``sentinel_client`` (None for another client)."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    return list(pool.sentinel_manager.sentinels)


def master_name(client: aredis.Redis) -> str | None:
    pool = client.connection_pool
    return pool.service_name if isinstance(pool, SentinelConnectionPool) else None


class SwitchWatch:
    """Hears ``+switch-master`` from every Sentinel and calls ``on_switch()`` when it names the
    master: connections then move at once, not after their reconnect backoff (Sentinel also ends the
    clients of an instance it reconfigures; this covers the moments before)."""

    def __init__(self, client: aredis.Redis, on_switch: Callable[[], None]) -> None:
        self._sentinels = sentinels_of(client) or []
        self._master = master_name(client)
        self._on_switch = on_switch
        self._tasks: list[asyncio.Task[None]] = []
        self._last: bytes | None = None  # every Sentinel announces the same switch: act on it once
        self._pubsubs: set[Any] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(s), name="resource-router-sentinel-watch") for s in self._sentinels]

    async def aclose(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
        for pubsub in self._pubsubs:  # closed here: a cancelled task may not finish closing its own
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        self._pubsubs.clear()

    async def _watch(self, sentinel: aredis.Redis) -> None:
        backoff = Backoff(0.05, 2.0)
        while True:
            pubsub = sentinel.pubsub()
            self._pubsubs.add(pubsub)
            try:
                await pubsub.subscribe("+switch-master")
                backoff.reset()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    name = data.split(b" ", 1)[0] if isinstance(data, bytes) else None
                    if name is not None and name.decode("utf-8", "replace") == self._master and data != self._last:
                        self._last = data
                        logger.warning("pubsub.sentinel_switch", master=self._master, to=data.decode(errors="replace"))
                        self._on_switch()
            except (RedisError, OSError) as exc:
                logger.debug("pubsub.sentinel_unreachable", error=f"{type(exc).__name__}: {exc}")
            self._pubsubs.discard(pubsub)
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            await asyncio.sleep(backoff.next_delay())
