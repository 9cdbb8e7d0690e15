"""Durable writes: with ``min_replicas >= 1``, every script that grants, renews, releases or takes over
ownership is followed in the same round trip by ``WAIT min_replicas replica_timeout_ms`` on the
master that ran it, and is reported done only when that many replicas acknowledged it.

``WAIT`` counts the replicas that acknowledged every write the connection made so far, so one ``WAIT``
after a pipeline of scripts covers all of them. On a single Redis (or through Sentinel) the scripts
and the ``WAIT`` travel in one pipeline; on a Redis Cluster each master's share is one pipeline on a
connection to that master (``WAIT`` has no key: it must reach the master that ran the scripts).

What ``WAIT`` promises (Redis docs): the writes reached that many replicas' memory. It does not make
them consistent: a failover may still promote a replica that did not acknowledge (Sentinel and
Cluster prefer the most up-to-date replica), and when fewer replicas answer the write is still
applied on the master. Then ``DurabilityError`` (503) says so, and the caller treats the write as not
done (README, "High availability", says what Redis is left with and how it is cleaned).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from resource_router.errors import DurabilityError
from resource_router.settings import RouterSettings
from resource_router.transport.connection import Client, client_options, is_cluster
from resource_router.transport.redis_errors import is_redirect

__all__ = ["Replicated"]

#: One script run: (script, keys, args).
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


class Replicated:
    """Runs writes followed by ``WAIT`` (see the module docstring). Raw redis-py errors: callers run
    it under ``call_redis``."""

    def __init__(self, redis: Client, settings: RouterSettings) -> None:
        self._redis = redis
        self._settings = settings
        self.required = settings.min_replicas
        self._timeout_ms = max(1, round(settings.replica_timeout * 1000))
        self._nodes: dict[str, aredis.Redis] = {}  # a cluster's masters, one client each

    async def run(self, operation: str, calls: list[ScriptCall]) -> list[Any]:
        """The scripts' replies, in order, once ``min_replicas`` acknowledged them all."""
        if not is_cluster(self._redis):
            return await self._on(self._redis, operation, calls)  # type: ignore[arg-type]
        by_node: dict[str, list[int]] = {}
        cluster: aredis.RedisCluster = self._redis  # type: ignore[assignment]
        for i, (_script, keys, _args) in enumerate(calls):
            node = cluster.get_node_from_key(keys[0])
            if node is None:
                raise RedisConnectionError(f"no master serves the slot of {keys[0]!r} now")
            by_node.setdefault(node.name, []).append(i)
            if node.name not in self._nodes:
                pool = BlockingConnectionPool(
                    connection_class=node.connection_class,
                    **{**node.connection_kwargs, **client_options(self._settings)},
                    max_connections=self._settings.max_connections,
                    timeout=None,
                )
                self._nodes[node.name] = aredis.Redis.from_pool(pool)
        parts = await asyncio.gather(
            *(self._on(self._nodes[name], operation, [calls[i] for i in idx]) for name, idx in by_node.items())
        )
        out: list[Any] = [None] * len(calls)
        for idx, replies in zip(by_node.values(), parts, strict=True):
            for i, reply in zip(idx, replies, strict=True):
                out[i] = reply
        return out

    async def _on(self, client: aredis.Redis, operation: str, calls: list[ScriptCall]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.required, self._timeout_ms)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        replies: list[Any] = []
        reloaded = False
        for (script, keys, args), result in zip(calls, results, strict=False):
            if isinstance(result, NoScriptError):  # a new master, or SCRIPT FLUSH: load, run again
                await client.script_load(script.script)
                result = await client.evalsha(script.sha, len(keys), *keys, *args)
                reloaded = True
            elif isinstance(result, ResponseError) and is_redirect(result):
                await self._moved()
                raise RedisConnectionError(f"the slot moved during {operation}: {result}")
            elif isinstance(result, Exception):
                raise result
            replies.append(result)
        acknowledged = results[-1]
        if reloaded:  # the scripts run again after the pipeline's WAIT: wait for them too
            acknowledged = await client.execute_command("WAIT", self.required, self._timeout_ms)  # type: ignore[no-untyped-call]
        if isinstance(acknowledged, Exception):
            raise acknowledged
        if int(acknowledged) < self.required:
            raise DurabilityError(
                f"{operation} was applied by the master but acknowledged by {int(acknowledged)} of the "
                f"{self.required} replica(s) required (min_replicas) within {self._settings.replica_timeout:g}s: "
                "it is not reported as done, since a failover could lose it",
                operation=operation,
                acknowledged=int(acknowledged),
                required=self.required,
            )
        return replies

    async def _moved(self) -> None:
        """A cluster's slot map changed: read it again (the next attempt goes to the new master)."""
        if is_cluster(self._redis):
            await self._redis.nodes_manager.initialize()  # type: ignore[union-attr]
            for client in self._nodes.values():
                await client.aclose()
            self._nodes.clear()

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()
