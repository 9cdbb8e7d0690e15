"""The one place where Redis failures become library errors.

``with redis_errors("lookup"): ...`` is used by the registry (through ``call_redis``), the pub/sub
transport, the events reader, the CLI and the gateway alike:

=================================================  =================================================
redis-py raises                                    callers see
=================================================  =================================================
``ConnectionError``, ``TimeoutError``, ``OSError``  ``RedisUnavailableError`` (503, ``.operation``)
cluster slot down or moving (``CLUSTERDOWN``,
``TRYAGAIN``, ``MASTERDOWN``, slot not covered)    ``RedisUnavailableError``
``MOVED``/``ASK`` on a single-node client          ``InvalidRequestError`` (field ``redis``): the URL
                                                   reaches a cluster node; use ``redis+cluster://``
``NOPERM`` (ACL)                                   ``ResourceRouterError`` naming the missing permission
any other ``RedisError``                           ``ResourceRouterError`` ("Redis error during ...")
=================================================  =================================================

Errors are raised ``from`` the redis-py exception; library errors pass through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import AskError, NoPermissionError, RedisClusterException, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resource_router.errors import InvalidRequestError, RedisUnavailableError, ResourceRouterError

__all__ = [
    "CLUSTER_HINT",
    "TRANSIENT_ERRORS",
    "is_redirect",
    "is_transient",
    "map_redis_error",
    "redis_errors",
    "redis_unavailable",
]

#: Errors after which the command may not have reached Redis, or its reply was lost.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
#: Reply prefixes of a cluster whose slot is unavailable for now (a retry may succeed).
_CLUSTER_TRANSIENT = ("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")
_REDIRECTS = ("MOVED ", "ASK ")
#: How Redis refuses a command that an ACL user may not run inside a script.
_SCRIPT_NOPERM = "The user executing the script can't run this command"

CLUSTER_HINT = (
    "this Redis is a node of a Redis Cluster: connect with "
    "redis+cluster://host:port[,host:port...]/ (rediss+cluster:// with TLS)"
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying may help: the connection failed, or a cluster slot is briefly unavailable."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, SlotNotCoveredError):
        return True  # the slot's master is gone and no other node serves it (yet)
    if isinstance(exc, RedisClusterException):
        return "cannot be connected" in str(exc)  # no startup node reachable
    return isinstance(exc, RedisError) and str(exc).startswith(_CLUSTER_TRANSIENT)


def is_redirect(exc: BaseException) -> bool:
    """True for a cluster's MOVED or ASK: the command did not run; its slot lives on another node."""
    return isinstance(exc, AskError) or str(exc).startswith(_REDIRECTS)  # redis-py 8 parses MOVED/ASK; 5.x not


def redis_unavailable(operation: str, exc: BaseException, tail: str | None = None) -> RedisUnavailableError:
    """The one wording of "Redis could not be reached"."""
    message = f"Redis is unreachable during {operation} ({type(exc).__name__}: {exc})"
    return RedisUnavailableError(f"{message}; {tail}" if tail else message, operation=operation)


def map_redis_error(operation: str, exc: BaseException, tail: str | None = None) -> ResourceRouterError:
    """The library error for a redis-py (or socket) failure during ``operation``."""
    if isinstance(exc, ResourceRouterError):
        return exc
    if is_transient(exc):
        return redis_unavailable(operation, exc, tail)
    text = str(exc)
    if is_redirect(exc):
        return InvalidRequestError(
            f"{CLUSTER_HINT} (Redis redirected {operation} to another node: {text})", field="redis"
        )
    if text.startswith("NOPERM") or isinstance(exc, NoPermissionError) or _SCRIPT_NOPERM in text:
        return ResourceRouterError(f"Redis refused {operation}: the user lacks a permission ({text})")
    return ResourceRouterError(f"Redis error during {operation}: {type(exc).__name__}: {text}")


@contextmanager
def redis_errors(operation: str) -> Iterator[None]:
    """Turn redis-py failures raised inside the block into library errors (see the module docstring)."""
    try:
        yield
    except ResourceRouterError:
        raise
    except (RedisError, RedisClusterException, OSError) as exc:
        raise map_redis_error(operation, exc) from exc
