"""The one retry policy: idempotent Redis operations are attempted again, with exponential backoff
and jitter, when Redis could not be reached; everything else runs once. Each attempt is bounded by
``settings.operation_timeout`` (``deadline.bounded``); failures are mapped by ``redis_errors``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from resource_router.errors import ResourceRouterError
from resource_router.settings import RouterSettings
from resource_router.transport.deadline import bounded
from resource_router.transport.redis_errors import is_transient, map_redis_error

__all__ = ["Backoff", "call_redis"]

T = TypeVar("T")


async def call_redis(
    operation: str,
    fn: Callable[[], Awaitable[T]],
    *,
    settings: RouterSettings,
    idempotent: bool,
) -> T:
    """Run ``fn``; retry transient failures with backoff when ``idempotent``.

    Transient failures surface as ``RedisUnavailableError``; any other Redis error as a plain
    ``ResourceRouterError`` (``redis_errors.map_redis_error``). Library errors raised by ``fn`` pass
    through untouched. The first attempt runs without building a retry controller: the hot path
    pays only for its deadline.
    """
    try:
        return await _attempt(fn, settings.operation_timeout)
    except ResourceRouterError:
        raise
    except Exception as exc:
        transient = is_transient(exc)
        if not transient or not idempotent or settings.retry_attempts <= 1:
            tail = "not retried (not idempotent)" if transient and not idempotent else None
            raise map_redis_error(operation, exc, tail) from exc
    return await _retry(operation, fn, settings)


async def _attempt(fn: Callable[[], Awaitable[T]], limit: float) -> T:
    """One attempt of a Redis operation, bounded by ``limit`` seconds."""
    try:
        return await bounded(fn, limit)
    except TimeoutError as exc:
        raise RedisTimeoutError(f"no reply within {limit}s (operation_timeout)") from exc


async def _retry(operation: str, fn: Callable[[], Awaitable[T]], settings: RouterSettings) -> T:
    """Attempts 2..n of an idempotent operation."""
    attempts = settings.retry_attempts
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts - 1),
            wait=wait_exponential(multiplier=settings.retry_initial_backoff, max=settings.retry_max_backoff)
            + wait_random(0, settings.retry_initial_backoff),
            retry=retry_if_exception(is_transient),
            before=_sleep_first(settings.retry_initial_backoff),
            reraise=True,
        ):
            with attempt:
                return await _attempt(fn, settings.operation_timeout)
    except ResourceRouterError:
        raise
    except Exception as exc:
        raise map_redis_error(operation, exc, f"gave up after {attempts} attempts") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _sleep_first(delay: float) -> Callable[[RetryCallState], Awaitable[None]]:
    """Back off before the first retried attempt too (the failed first attempt ran outside tenacity)."""

    async def before(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            await asyncio.sleep(delay)

    return before


class Backoff:
    """Delays of a reconnect loop: exponential from ``initial`` up to ``maximum``, with full jitter
    in the upper half (many processes reconnecting after one Redis restart do not stampede)."""

    def __init__(self, initial: float = 0.05, maximum: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._failures = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (2**self._failures))
        self._failures = min(self._failures + 1, 30)
        delay: float = base / 2 + random.random() * base / 2
        return delay

    def reset(self) -> None:
        self._failures = 0
