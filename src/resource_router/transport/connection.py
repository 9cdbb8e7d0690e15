"""Redis connections: a URL or a ready client, for a single Redis, a Redis Cluster or ``memory://``.

URL forms: ``redis://host:port/db``, ``rediss://`` (TLS), ``unix:///path.sock``,
``redis+cluster://host:port[,host:port...]/`` (``rediss+cluster://`` with TLS),
``redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/db]`` (``sentinel.py``) and ``memory://`` /
``memory://NAME`` (an in-process Redis-compatible server, fakeredis with Lua; every client made
from the same name in one process shares it; it needs the ``memory`` extra:
``pip install 'resource-router[memory]'``). A real URL is never replaced by the embedded server.

**What the library sets on the clients it makes** (``CLIENT_OPTIONS``; redis-py's defaults differ
between 5.x and 8.x, so the library owns them instead of inheriting them):

* ``protocol=2``: RESP2 on every redis-py version (8.x defaults to RESP3);
* ``decode_responses=False``: replies as bytes (payloads are msgpack);
* ``socket_timeout=None``: no per-read timer inside redis-py. Every operation has the library's
  own deadline (``operation_timeout``, the caller's timeout), and cancelling a read never turns
  into a ``TimeoutError`` that a loop would mistake for a transient failure (redis-py 8.x sets 5 s);
* ``retry`` with 0 retries (``redis.asyncio.retry.Retry``, the class asyncio clients take on every
  redis-py version; 8.2 warns when given the synchronous one): redis-py 8.x retries every command
  10 times by default, including non-idempotent script calls; the library retries only idempotent
  operations, under one policy;
* ``socket_connect_timeout`` from ``RouterSettings.connect_timeout``; TCP keepalive on, with
  probes after ``keepalive_idle`` seconds of silence (half-open connections fail within bounds).

**Clients passed in** stay the caller's (never closed by the library). The library talks to the
same server with a twin of its own: same connection class, address, database, credentials, client
name and TLS options, and the settings above. Pools that cannot be re-created from their connection
arguments (Sentinel pools, custom pools, the embedded server's) are used as they are: then they
should have no retries of their own for commands (``retry=redis.asyncio.retry.Retry(NoBackoff(), 0)``)
and RESP2.
"""

from __future__ import annotations

import socket
import weakref
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from resource_router.errors import InvalidRequestError
from resource_router.settings import RouterSettings, redact_url
from resource_router.transport.memory import is_memory_url, memory_client
from resource_router.transport.sentinel import SENTINEL_SCHEMES, parse_sentinel_url, sentinel_client, sentinels_of

__all__ = [
    "CLIENT_OPTIONS",
    "Client",
    "RedisLike",
    "client_options",
    "close_client",
    "connect",
    "describe",
    "is_cluster",
    "is_memory",
    "server_identity",
]

#: What every entry object accepts: a URL or an asyncio client (``Redis`` or ``RedisCluster``).
RedisLike = str | aredis.Redis | aredis.RedisCluster
#: A client the library talks through.
Client = aredis.Redis | aredis.RedisCluster

#: Behaviour the library owns on its clients (see the module docstring); the timeouts come from settings.
CLIENT_OPTIONS: dict[str, Any] = {
    "protocol": 2,
    "decode_responses": False,
    "socket_timeout": None,
    "socket_keepalive": True,
    "health_check_interval": 0,
}

_SINGLE_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Connection arguments that say where a connection goes and how it authenticates (kept in twins,
#: and what two clients must share to share the process's pub/sub connections).
_IDENTITY_KEYS = frozenset(
    {"host", "port", "path", "db", "username", "password", "credential_provider", "client_name", "ssl"}
)

#: Identity recorded for the clients this module made (RedisCluster nodes change after discovery).
_IDENTITIES: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
#: Printable forms of clients whose connections do not say where they go (Sentinel: the master moves).
_DESCRIPTIONS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def client_options(settings: RouterSettings) -> dict[str, Any]:
    """What the library sets on every connection it makes (the list in the module docstring)."""
    options = dict(CLIENT_OPTIONS)
    options["socket_connect_timeout"] = settings.connect_timeout
    options["socket_keepalive_options"] = _keepalive_options(settings.keepalive_idle)
    options["retry"] = Retry(NoBackoff(), 0)
    return options


def _keepalive_options(idle: float) -> dict[int, int]:
    """TCP keepalive probes after ``idle`` seconds of silence, 3 probes 1 s apart (Linux, macOS)."""
    out: dict[int, int] = {}
    idle_s = max(1, int(idle))
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            out[option] = value
    return out


def connect(redis: RedisLike, settings: RouterSettings | None = None) -> Client:
    """The client the library talks through for ``redis`` (a URL, or a client to make a twin of).

    Returns ``redis`` itself only when it cannot be twinned (see the module docstring); callers
    close what they get unless it ``is`` what they passed.
    """
    settings = settings or RouterSettings()
    if redis in _IDENTITIES:  # made here already: the library's settings are on it
        return redis  # type: ignore[return-value]
    if isinstance(redis, aredis.RedisCluster):
        return _cluster_twin(redis, settings)
    if isinstance(redis, aredis.Redis):
        return _twin(redis, settings)
    if not isinstance(redis, str) or not redis:
        raise InvalidRequestError("redis must be a URL or a redis.asyncio client", field="redis")
    if is_memory_url(redis):
        return _memory_client(redis)
    scheme = urlsplit(redis).scheme
    if scheme in _CLUSTER_SCHEMES:
        return _cluster_from_url(redis, settings)
    if scheme in SENTINEL_SCHEMES:
        target = parse_sentinel_url(redis)
        sentinel = sentinel_client(target, client_options(settings), settings.max_connections)
        _IDENTITIES[sentinel] = target.identity()
        _DESCRIPTIONS[sentinel] = target.describe()
        return sentinel
    if scheme not in _SINGLE_SCHEMES:
        raise InvalidRequestError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, unix://, "
            "redis+cluster://host:port[,host:port...]/, redis+sentinel://host:port[,host:port...]/MASTER "
            "or memory://",
            field="redis",
        )
    try:
        pool = BlockingConnectionPool.from_url(redis, **_pool_options(settings))
    except ValueError as exc:  # e.g. a port that is not a number
        raise InvalidRequestError(f"invalid Redis URL {redact_url(redis)}: {exc}", field="redis") from exc
    client = aredis.Redis.from_pool(pool)  # closes its pool on aclose()
    _IDENTITIES[client] = _pool_identity(client)
    return client


def _pool_options(settings: RouterSettings) -> dict[str, Any]:
    """A blocking pool: past ``max_connections``, callers wait (within their deadline) instead of
    failing (redis-py 8.x raises) or opening without bound (5.x)."""
    return {**client_options(settings), "max_connections": settings.max_connections, "timeout": None}


def _memory_client(url: str) -> aredis.Redis:
    client, server = memory_client(url)
    _IDENTITIES[client] = ("memory", id(server), 0)
    return client


def _twin(client: aredis.Redis, settings: RouterSettings) -> aredis.Redis:
    pool = client.connection_pool
    conn_class = pool.connection_class
    if type(pool) not in (ConnectionPool, BlockingConnectionPool) or not conn_class.__module__.startswith("redis."):
        if pool.connection_kwargs.get("decode_responses", False):
            # The embedded server (or a custom pool): keep everything but ask for bytes.
            kwargs = dict(pool.connection_kwargs, decode_responses=False)
            twin = aredis.Redis.from_pool(type(pool)(connection_class=conn_class, **kwargs))
            _IDENTITIES[twin] = server_identity(client)
            return twin
        return client
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in _IDENTITY_KEYS or k.startswith("ssl_")}
    new_pool = BlockingConnectionPool(connection_class=conn_class, **kwargs, **_pool_options(settings))
    twin = aredis.Redis.from_pool(new_pool)  # closes its own pool on aclose()
    _IDENTITIES[twin] = _pool_identity(twin)
    return twin


def _cluster_nodes(spec: str) -> list[tuple[str, int]]:
    nodes: list[tuple[str, int]] = []
    for part in spec.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequestError(
                f"invalid cluster node {part!r}: use redis+cluster://host:port[,host:port...]/", field="redis"
            )
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _cluster_from_url(url: str, settings: RouterSettings) -> aredis.RedisCluster:
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/"):
        raise InvalidRequestError("a Redis Cluster has only database 0: drop the path from the URL", field="redis")
    username, _, password = userinfo.partition(":")
    auth: dict[str, Any] = {}
    if username:
        auth["username"] = unquote(username)
    if password:
        auth["password"] = unquote(password)
    if parts.scheme.startswith("rediss"):
        auth["ssl"] = True
    return _make_cluster(_cluster_nodes(hosts), auth, settings)


def _make_cluster(
    nodes: list[tuple[str, int]], kwargs: dict[str, Any], settings: RouterSettings
) -> aredis.RedisCluster:
    options = client_options(settings)
    client = aredis.RedisCluster(  # type: ignore[abstract,unused-ignore]  # redis-py 5.x stubs
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        require_full_coverage=False,
        max_connections=settings.max_connections * 8,  # per node; redis-py has no blocking cluster pool
        **kwargs,
        **options,
    )
    _IDENTITIES[client] = (
        "cluster",
        tuple(sorted(nodes)),
        tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())),
    )
    return client


def _cluster_twin(client: aredis.RedisCluster, settings: RouterSettings) -> aredis.RedisCluster:
    source = client.nodes_manager.connection_kwargs
    kwargs = {
        k: v for k, v in source.items() if (k in _IDENTITY_KEYS or k.startswith("ssl_")) and k not in ("host", "port")
    }
    if issubclass(source.get("connection_class", object), SSLConnection):
        kwargs["ssl"] = True
    nodes = [(node.host, int(node.port)) for node in client.nodes_manager.startup_nodes.values()]
    return _make_cluster(nodes, kwargs, settings)


def _hashable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    if isinstance(value, tuple | list):
        return tuple(_hashable(v) for v in value)
    return ("id", id(value))


def _pool_identity(client: aredis.Redis) -> tuple[Any, ...]:
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if "server" in kwargs:  # the embedded server: one per memory:// name, whatever the client
        return ("memory", id(kwargs["server"]), kwargs.get("db", 0))
    items = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items() if k in _IDENTITY_KEYS or k.startswith("ssl_")))
    return ("redis", pool.connection_class, items)


def server_identity(client: Client) -> tuple[Any, ...]:
    """What identifies the server(s) behind ``client``: clients with equal identities share the
    process's pub/sub connections."""
    known = _IDENTITIES.get(client)
    if known is not None:
        return known
    if isinstance(client, aredis.RedisCluster):
        nodes = tuple(sorted(client.nodes_manager.startup_nodes))
        return ("cluster", nodes, ())
    return _pool_identity(client)


async def close_client(client: Client) -> None:
    """Close a client made by ``connect``. For a Redis Cluster, also every node it still knows, the
    startup nodes included: redis-py leaves the connections of nodes it stopped using open."""
    if isinstance(client, aredis.RedisCluster):
        manager = client.nodes_manager
        nodes = {id(n): n for n in (*manager.nodes_cache.values(), *manager.startup_nodes.values())}
        await client.aclose()
        for node in nodes.values():
            await node.disconnect()
        return
    await client.aclose()
    for sentinel in sentinels_of(client) or ():  # redis-py leaves the Sentinels' own clients open
        await sentinel.aclose()


def is_cluster(client: Client) -> bool:
    return isinstance(client, aredis.RedisCluster)


def is_memory(client: Client) -> bool:
    return bool(server_identity(client)[0] == "memory")


def describe(client: Client) -> str:
    """A printable, password-free description of where ``client`` points."""
    if isinstance(client, aredis.RedisCluster):
        nodes = ",".join(sorted(client.nodes_manager.startup_nodes))
        return f"redis+cluster://{nodes}/"
    known = _DESCRIPTIONS.get(client)
    if known is not None:
        return known
    kw = client.connection_pool.connection_kwargs
    if "server" in kw or type(client).__module__.startswith("fakeredis"):
        return "memory://"
    if "path" in kw:
        return f"unix://{kw['path']}"
    scheme = "rediss" if kw.get("ssl") or "ssl_cert_reqs" in kw else "redis"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
