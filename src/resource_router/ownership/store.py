"""What every part of the registry shares: the client, the scripts, settings, keys and metrics, and
the two ways scripts run (one, or one per partition in a single round trip).

``Store.service(name)`` gives a service's keys once its partition count was checked against the one
recorded in Redis (``rr:{S}:partitions``, written on first use): an entry object configured with
another count fails at once (it would look for every resource in the wrong partition).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from resource_router.errors import InvalidRequestError
from resource_router.observability.logs import id_fields
from resource_router.observability.metrics import Metrics
from resource_router.ownership.durable import Replicated
from resource_router.ownership.keys import KeySpace, PartitionKeys, ServiceKeys
from resource_router.ownership.scripts import WRITE_SCRIPTS, ScriptSet, check_status
from resource_router.settings import MAX_TTL, MIN_TTL, RouterSettings, validate_seconds
from resource_router.transport.connection import Client, is_cluster, is_memory
from resource_router.transport.retry import call_redis

__all__ = ["ScriptCall", "Store", "log_context", "pairs", "parse_grant", "text", "ttl_ms"]

#: One script run: (script, keys, args).
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]

_SERVICE_CACHE_LIMIT = 4096


#: ``run_all(interleave=True)``: keys per pipelined window on a single Redis (about a millisecond of
#: script time: other clients' commands wait no longer behind a large batch).
INTERLEAVE_KEYS = 64


def _windows(calls: list[ScriptCall]) -> list[list[ScriptCall]]:
    """Consecutive runs grouped while their keys add up to ``INTERLEAVE_KEYS`` (a larger run alone)."""
    windows: list[list[ScriptCall]] = []
    size = INTERLEAVE_KEYS
    for call in calls:
        if size + len(call[1]) > INTERLEAVE_KEYS:
            windows.append([])
            size = 0
        windows[-1].append(call)
        size += len(call[1])
    return windows


def text(value: Any) -> str:
    """A reply value as text (ids are stored as UTF-8; undecodable bytes survive a round trip)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def ttl_ms(ttl: object) -> int:
    return max(1, round(validate_seconds(ttl, "ttl", low=MIN_TTL, high=MAX_TTL) * 1000))


def pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}


def parse_grant(raw: Any) -> tuple[int, int, dict[str, Any]] | None:
    """A grant record ``fencing_token|registered_ms|metadata_json`` -> parts; None when absent or unreadable."""
    if raw is None or raw is False:
        return None
    try:
        token, registered_ms, meta = text(raw).split("|", 2)
        metadata = json.loads(meta) if meta else {}
        return int(token), int(registered_ms), metadata if isinstance(metadata, dict) else {}
    except ValueError:
        return None


def log_context(
    operation: str, elapsed: float, service_name: str, instance_id: str, trace_id: str, ids: list[str]
) -> dict[str, Any]:
    return {
        "service_name": service_name,
        "instance_id": instance_id,
        "trace_id": trace_id,
        "operation": operation,
        "duration_ms": round(elapsed * 1000.0, 3),
        **id_fields(ids),
    }


class Store:
    """The registry's shared context (see the module docstring)."""

    def __init__(self, redis: Client, settings: RouterSettings, keys: KeySpace, metrics: Metrics) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = keys
        self.metrics = metrics
        self.scripts = ScriptSet.for_client(redis)
        self.cluster = is_cluster(redis)
        #: Sharded pub/sub on Redis Cluster: events stay on the shard of the script's slot.
        self.publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self._keys: dict[str, ServiceKeys] = {}
        self._checked: set[str] = set()
        self._children: dict[tuple[str, ...], Any] = {}
        #: with min_replicas: the writes of ownership run followed by WAIT (``durable.py``)
        self.replicated: Replicated | None = None
        if settings.min_replicas:
            if is_memory(redis):
                raise InvalidRequestError(
                    "min_replicas needs a replicated Redis: the embedded memory:// store has no replicas",
                    field="min_replicas",
                )
            self.replicated = Replicated(redis, settings)
        self._writes = {self.scripts.shas[name] for name in WRITE_SCRIPTS}

    # -- services ----------------------------------------------------------------------------------
    def service_keys(self, service_name: str) -> ServiceKeys:
        """Validated keys of a service (no I/O), cached."""
        sk = self._keys.get(service_name)
        if sk is None:
            sk = self.keys.service(service_name, self.settings.partitions)
            if len(self._keys) < _SERVICE_CACHE_LIMIT:
                self._keys[service_name] = sk
        return sk

    async def service(self, service_name: str, operation: str, *, record: bool = False) -> ServiceKeys:
        """Keys of a service whose partition count matches the one recorded in Redis (recorded now
        when ``record`` and none is). One round trip the first time, none after; failures are
        reported as ``operation``'s."""
        sk = self.service_keys(service_name)
        if service_name in self._checked:
            return sk
        reply = await self.run(
            operation,
            self.scripts.check_partitions,
            [sk.partitions_key],
            [sk.partitions, "1" if record else "0"],
            idempotent=True,
        )
        recorded = reply[1]
        if recorded is not None:
            count = int(recorded)
            if count != sk.partitions:
                raise InvalidRequestError(
                    f"service {service_name!r} was set up with partitions={count}; this object uses "
                    f"partitions={sk.partitions}. Use the same count everywhere (changing it would move "
                    "every resource to another partition).",
                    field="partitions",
                )
            if len(self._checked) < _SERVICE_CACHE_LIMIT:
                self._checked.add(service_name)
        return sk

    def common(self, channel: str, service_name: str, instance_id: str, trace_id: str | None) -> list[Any]:
        """ARGV[1..6] of the scripts that emit events (see ``_prelude.lua``)."""
        return [
            service_name,
            instance_id,
            channel,
            self.settings.audit_maxlen,
            trace_id or "",
            self.publish_command,
        ]

    def part_common(self, part: PartitionKeys, instance_id: str, trace_id: str | None) -> list[Any]:
        return self.common(part.events_channel, part.service_name, instance_id, trace_id)

    # -- running scripts ---------------------------------------------------------------------------
    async def run(
        self, operation: str, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], *, idempotent: bool
    ) -> list[Any]:
        """One script run under the retry policy; the reply, its status checked. A write of ownership
        is followed by ``WAIT`` when ``min_replicas`` asks for it (``durable.py``)."""
        replicated = self.replicated
        if replicated is not None and script.sha in self._writes:
            replies = await call_redis(
                operation,
                lambda: replicated.run(operation, [(script, keys, args)]),
                settings=self.settings,
                idempotent=idempotent,
            )
            reply: list[Any] = replies[0]
        else:
            reply = await call_redis(
                operation, lambda: script(keys=keys, args=args), settings=self.settings, idempotent=idempotent
            )
        check_status(reply, operation)
        return reply

    async def run_all(
        self, operation: str, calls: list[ScriptCall], *, idempotent: bool, interleave: bool = False
    ) -> list[list[Any]]:
        """Several script runs (one per partition, say) at once: one pipelined round trip on a single
        Redis, each master's share in parallel on a cluster. Replies in order, statuses checked.

        ``interleave`` (large batches): on a single Redis, the runs go in windows of at most
        ``INTERLEAVE_KEYS`` keys, one window after another. Redis runs a client's pipeline back to
        back, so one window is the longest any other client's command (a lookup) waits behind it."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            return [await self.run(operation, script, keys, args, idempotent=idempotent)]
        replicated = self.replicated
        if replicated is not None and any(script.sha in self._writes for script, _k, _a in calls):
            replies = await call_redis(
                operation, lambda: replicated.run(operation, calls), settings=self.settings, idempotent=idempotent
            )
        elif self.cluster:
            replies = await call_redis(
                operation,
                lambda: asyncio.gather(*(script(keys=keys, args=args) for script, keys, args in calls)),
                settings=self.settings,
                idempotent=idempotent,
            )
        else:
            replies = []
            for window in _windows(calls) if interleave else [calls]:
                replies += await call_redis(
                    operation, functools.partial(self._pipelined, window), settings=self.settings, idempotent=idempotent
                )
        for reply in replies:
            check_status(reply, operation)
        return replies

    async def owned_totals(self, sk: ServiceKeys, instance_ids: Sequence[str]) -> list[int]:
        """Resources owned by each instance, summed over the partitions (one pipeline of HLENs; raw
        Redis errors: callers run it under ``call_redis``)."""
        if not instance_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for iid in instance_ids:
                for part in sk.parts:
                    pipe.hlen(part.owned(iid))
            counts = await pipe.execute()
        n = sk.partitions
        return [sum(int(c) for c in counts[i * n : (i + 1) * n]) for i in range(len(instance_ids))]

    async def _pipelined(self, calls: list[ScriptCall]) -> list[list[Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        out: list[list[Any]] = []
        for (script, keys, args), result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted or SCRIPT FLUSH: load, run again
                result = await script(keys=keys, args=args)
            elif isinstance(result, Exception):
                raise result
            out.append(result)
        return out

    async def aclose(self) -> None:
        if self.replicated is not None:
            await self.replicated.aclose()

    # -- metrics -------------------------------------------------------------------------------------
    def child(self, metric: str, *labels: str) -> Any:
        """A labelled metric child, cached (``labels()`` costs about 1 us per call)."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = getattr(self.metrics, metric).labels(*labels)
            if len(self._children) < 4096:  # label values are bounded by metrics.LabelSets anyway
                self._children[key] = child
        return child
