"""Deadlines: one bound per operation, cheap on hot paths.

``bounded(fn, seconds)`` awaits ``fn()`` and cancels it with ``TimeoutError`` after ``seconds``. A
routed call runs entirely inside one ``bounded`` scope (lookup, publish and the wait for the reply),
so one deadline covers it from start to reply; each attempt of a registry operation runs inside one
too (``operation_timeout``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["bounded"]

T = TypeVar("T")


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
    """Coarse deadlines, one per event loop.

    ``asyncio.timeout`` costs a timer handle per call (about 5 us here, as much as the rest of a
    lookup's Python code). This keeps in-flight operations in a dict and checks them on one timer
    every ``TICK`` seconds, cancelling the tasks that ran past their deadline. Deadlines are
    accurate to ``TICK``.
    """

    TICK = 0.02
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = weakref.WeakKeyDictionary()
    _last: _Watchdog | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._inflight: dict[int, tuple[float, asyncio.Task[Any]]] = {}
        self._fired: set[int] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0

    @classmethod
    def for_running_loop(cls) -> _Watchdog:
        loop = asyncio.get_running_loop()
        last = cls._last
        if last is not None and last._loop is loop:  # the usual case: one loop per process
            return last
        dog = cls._by_loop.get(loop)
        if dog is None:
            dog = cls._by_loop[loop] = cls(loop)
        cls._last = dog
        return dog

    def enter(self, limit: float) -> tuple[asyncio.Task[Any] | None, int]:
        task = asyncio.current_task()
        self._next += 1
        key = self._next
        if task is not None:
            self._inflight[key] = (self._loop.time() + limit, task)
            if self._handle is None:
                self._handle = self._loop.call_later(min(self.TICK, max(limit, 0.0)), self._tick)
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
