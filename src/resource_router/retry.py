"""Redis failures: one retry policy, applied only to idempotent operations, and one wrapper that
turns redis-py exceptions into library errors (``raise ... from exc``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from .errors import RedisUnavailableError, ResourceRouterError
from .settings import RouterSettings

__all__ = ["TRANSIENT_ERRORS", "call_redis"]

T = TypeVar("T")

#: Errors after which the command may not have reached Redis, or its reply was lost.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


async def call_redis(
    operation: str,
    fn: Callable[[], Awaitable[T]],
    *,
    settings: RouterSettings,
    idempotent: bool,
) -> T:
    """Run ``fn``; retry transient failures with exponential backoff when ``idempotent``.

    Each attempt is bounded by ``settings.operation_timeout``. Transient failures surface as
    ``RedisUnavailableError``; any other Redis error as a plain ``ResourceRouterError``.
    Library errors raised by ``fn`` pass through untouched.
    """
    attempts = settings.retry_attempts if idempotent else 1
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=settings.retry_initial_backoff, max=settings.retry_max_backoff)
            + wait_random(0, settings.retry_initial_backoff),
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            reraise=True,
        ):
            with attempt:
                try:
                    async with asyncio.timeout(settings.operation_timeout):
                        return await fn()
                except TimeoutError as exc:
                    raise RedisTimeoutError(
                        f"no reply within {settings.operation_timeout}s (operation_timeout)"
                    ) from exc
    except ResourceRouterError:
        raise
    except TRANSIENT_ERRORS as exc:
        raise RedisUnavailableError(
            f"Redis is unreachable during {operation} ({type(exc).__name__}: {exc}); "
            f"{'gave up after ' + str(attempts) + ' attempts' if attempts > 1 else 'not retried (not idempotent)'}",
            operation=operation,
        ) from exc
    except RedisError as exc:
        raise ResourceRouterError(f"Redis error during {operation}: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
