"""Redis failures: one retry policy, applied only to idempotent operations, and one wrapper that
turns redis-py exceptions into library errors (``raise ... from exc``)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from .errors import RedisUnavailableError, ResourceRouterError
from .settings import RouterSettings

__all__ = ["TRANSIENT_ERRORS", "bounded", "call_redis", "redis_unavailable"]

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
    Library errors raised by ``fn`` pass through untouched. The first attempt runs without building
    a retry controller: the hot path pays only for the timeout.
    """
    try:
        return await _attempt(fn, settings.operation_timeout)
    except ResourceRouterError:
        raise
    except TRANSIENT_ERRORS as exc:
        if not idempotent or settings.retry_attempts <= 1:
            raise _unavailable(operation, exc, attempts=1, idempotent=idempotent) from exc
        first_error: BaseException = exc
    except RedisError as exc:
        raise _redis_error(operation, exc) from exc
    return await _retry(operation, fn, settings, first_error)


async def _attempt(fn: Callable[[], Awaitable[T]], limit: float) -> T:
    """One attempt of a Redis operation, bounded by ``limit`` seconds."""
    try:
        return await bounded(fn, limit)
    except TimeoutError as exc:
        raise RedisTimeoutError(f"no reply within {limit}s (operation_timeout)") from exc


async def bounded(fn: Callable[[], Awaitable[T]], limit: float) -> T:
    """Await ``fn()``, cancelling it with ``TimeoutError`` after ``limit`` seconds.

    The cheap equivalent of ``asyncio.timeout`` used on hot paths (see ``_Watchdog``).
    """
    watchdog = _Watchdog.for_running_loop()
    task, key = watchdog.enter(limit)
    try:
        return await fn()
    except asyncio.CancelledError:
        if watchdog.leave(task, key):
            raise TimeoutError(f"no result within {limit}s") from None
        raise
    finally:
        watchdog.leave(task, key)


class _Watchdog:
    """Coarse deadlines for Redis operations, one per event loop.

    ``asyncio.timeout`` costs a timer handle per call (about 5 us here, as much as the rest of a
    lookup's Python code). This keeps in-flight operations in a dict and checks them on one timer
    every ``TICK`` seconds, cancelling the tasks that ran past their deadline; a cancelled attempt
    becomes a ``RedisTimeoutError``. Deadlines are accurate to ``TICK``.
    """

    TICK = 0.05
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._inflight: dict[int, tuple[float, asyncio.Task[Any]]] = {}
        self._fired: set[int] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0

    @classmethod
    def for_running_loop(cls) -> _Watchdog:
        loop = asyncio.get_running_loop()
        dog = cls._by_loop.get(loop)
        if dog is None:
            dog = cls._by_loop[loop] = cls(loop)
        return dog

    def enter(self, limit: float) -> tuple[asyncio.Task[Any] | None, int]:
        task = asyncio.current_task()
        self._next += 1
        key = self._next
        if task is not None:
            self._inflight[key] = (self._loop.time() + limit, task)
            if self._handle is None:
                self._handle = self._loop.call_later(self.TICK, self._tick)
        return task, key

    def leave(self, task: asyncio.Task[Any] | None, key: int) -> bool:
        """Forget the operation; True (once) when the watchdog cancelled it."""
        self._inflight.pop(key, None)
        if key in self._fired:
            self._fired.discard(key)
            if task is not None:
                task.uncancel()
            return True
        return False

    def _tick(self) -> None:
        now = self._loop.time()
        expired = [key for key, (deadline, _) in self._inflight.items() if deadline <= now]
        for key in expired:
            _, task = self._inflight.pop(key)
            self._fired.add(key)
            task.cancel()
        self._handle = self._loop.call_later(self.TICK, self._tick) if self._inflight else None


async def _retry(
    operation: str, fn: Callable[[], Awaitable[T]], settings: RouterSettings, first_error: BaseException
) -> T:
    """Attempts 2..n of an idempotent operation, with the one retry policy of the library."""
    attempts = settings.retry_attempts
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts - 1),
            wait=wait_exponential(multiplier=settings.retry_initial_backoff, max=settings.retry_max_backoff)
            + wait_random(0, settings.retry_initial_backoff),
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            before=_sleep_first(settings.retry_initial_backoff),
            reraise=True,
        ):
            with attempt:
                return await _attempt(fn, settings.operation_timeout)
    except ResourceRouterError:
        raise
    except TRANSIENT_ERRORS as exc:
        raise _unavailable(operation, exc, attempts=attempts, idempotent=True) from exc
    except RedisError as exc:
        raise _redis_error(operation, exc) from exc
    raise AssertionError("unreachable") from first_error  # pragma: no cover


def _sleep_first(delay: float) -> Callable[[RetryCallState], Awaitable[None]]:
    """Back off before the first retried attempt too (the failed first attempt ran outside tenacity)."""

    async def before(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            await asyncio.sleep(delay)

    return before


def _unavailable(operation: str, exc: BaseException, *, attempts: int, idempotent: bool) -> RedisUnavailableError:
    tail = (
        f"gave up after {attempts} attempts"
        if attempts > 1
        else ("not retried (not idempotent)" if not idempotent else "retries disabled")
    )
    return redis_unavailable(operation, exc, tail)


def redis_unavailable(operation: str, exc: BaseException, tail: str | None = None) -> RedisUnavailableError:
    """The one wording of "Redis could not be reached" (registry calls, pub/sub hub, events)."""
    message = f"Redis is unreachable during {operation} ({type(exc).__name__}: {exc})"
    return RedisUnavailableError(f"{message}; {tail}" if tail else message, operation=operation)


def _redis_error(operation: str, exc: RedisError) -> ResourceRouterError:
    return ResourceRouterError(f"Redis error during {operation}: {type(exc).__name__}: {exc}")
