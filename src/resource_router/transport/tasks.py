"""Background tasks that always stop: ``stop_task`` and ``TaskSet``.

``stop_task(task)`` cancels a background task and waits for it, cancelling again if the task
swallowed a cancellation (a library under it may turn a cancellation into another error): loops
stop even then, as long as they also check their own stop flag. ``TaskSet`` keeps the fire-and-forget
tasks of one owner (an instance, its ownership view) so that they are never lost and can all be
awaited or cancelled when the owner stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

__all__ = ["TaskSet", "stop_task"]


async def stop_task(task: asyncio.Task[Any] | None, *, grace: float = 0.05) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again every ``grace`` seconds while it
    runs (a cancellation swallowed below must not leave the loop running)."""
    if task is None or task is asyncio.current_task():
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
    if not task.cancelled():
        task.exception()  # retrieved: never "exception was never retrieved"


class TaskSet:
    """Tasks started by one owner and not awaited by anyone (see the module docstring)."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Wait until every task (those they start included) has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
