"""Trace ids, timing and structured log events shared by every operation.

Log events have stable names (``resource.register``, ``route.call``, ...) and always carry
``operation`` and ``duration_ms``, plus ``trace_id``, ``resource_id`` and ``instance_id`` where they
apply. The library only emits events; the CLI and gateway configure structlog.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog

from .metrics import Metrics

__all__ = ["id_fields", "logger", "new_trace_id", "timed"]

logger = structlog.get_logger("resource_router")


def new_trace_id() -> str:
    """128 random bits as 32 hex characters (the W3C trace-id size)."""
    return os.urandom(16).hex()


def id_fields(resource_ids: Sequence[str]) -> dict[str, Any]:
    """``resource_id`` for one id; for a batch, the count and a short preview."""
    if len(resource_ids) == 1:
        return {"resource_id": resource_ids[0]}
    return {"resource_count": len(resource_ids), "resource_ids": list(resource_ids[:5])}


@contextmanager
def timed(metrics: Metrics, operation: str) -> Iterator[dict[str, Any]]:
    """Measure a block; yields a dict whose ``duration_ms`` is filled in when the block ends."""
    info: dict[str, Any] = {"operation": operation}
    start = time.perf_counter()
    try:
        yield info
    finally:
        elapsed = time.perf_counter() - start
        info["duration_ms"] = round(elapsed * 1000.0, 3)
        metrics.operation_duration.labels(operation).observe(elapsed)
