"""The requests an instance is running: at most ``max_concurrency`` handlers at once, and with
``serial_per_resource`` one at a time per resource.

* **Concurrent** (the default): each request is a task of its own; the task takes a ``slot`` before
  its handler runs.
* **Serial per resource**: requests for one resource run one after another in arrival order, from a
  mailbox drained by one task per busy resource; requests for different resources still run
  concurrently. The actor guarantee: a handler never runs while another handler of the same resource
  runs on this instance.

``quiesce(ids)`` waits for the requests of resources that are leaving (a move, ``on_deactivate``);
``finish(grace)`` lets everything running end, then cancels what is left.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any

from resource_router.observability.logs import Logger

__all__ = ["Jobs"]

Job = Coroutine[Any, Any, None]


class Jobs:
    """Running requests of one instance (see the module docstring)."""

    def __init__(self, max_concurrency: int, *, serial: bool, log: Logger) -> None:
        self.serial = serial
        self.slot = asyncio.Semaphore(max_concurrency)
        self._log = log
        self._inflight: dict[asyncio.Task[None], str | None] = {}
        self._mailboxes: dict[str, deque[Job]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def start(self, resource_id: str | None, job: Job) -> None:
        """Run ``job`` (in the resource's mailbox when serial)."""
        if self.serial and resource_id is not None:
            box = self._mailboxes.get(resource_id)
            if box is not None:
                box.append(job)
                return
            box = self._mailboxes[resource_id] = deque([job])
            job = self._serve_mailbox(resource_id, box)
        task = asyncio.get_running_loop().create_task(job)
        self._inflight[task] = resource_id
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        del self._inflight[task]

    async def _serve_mailbox(self, resource_id: str, box: deque[Job]) -> None:
        try:
            while box:
                try:
                    await box[0]
                except Exception:  # never leave the mailbox with requests in it
                    self._log.exception("route.dispatch_failed", resource_id=resource_id)
                del box[0]
        finally:
            if self._mailboxes.get(resource_id) is box:
                del self._mailboxes[resource_id]
            for pending in box:  # cancelled: the requests not started are dropped with their coroutines
                pending.close()

    def busy(self) -> set[str]:
        """Resources with a request running or queued here."""
        return {rid for rid in self._inflight.values() if rid is not None}

    async def quiesce(self, ids: Iterable[str], grace: float | None = None) -> None:
        """Wait until no request for ``ids`` is running or queued here; after ``grace`` seconds, cancel them."""
        wanted = set(ids)
        me = asyncio.current_task()  # a handler releasing its own resource does not wait for itself
        tasks = [task for task, rid in self._inflight.items() if rid in wanted and task is not me]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            self._log.warning("instance.move_timeout", cancelled=len(pending))
            await _cancel(list(pending))

    async def finish(self, grace: float) -> None:
        """Let running requests finish (up to ``grace`` seconds), cancel the rest."""
        if self._inflight:
            _done, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            if pending:
                self._log.warning("instance.drain_timeout", cancelled=len(pending))
        await _cancel(list(self._inflight))


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
