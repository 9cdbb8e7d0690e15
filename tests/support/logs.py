"""Capture the library's log events as dicts: ``{"event", "log_level", "logger", **fields}``
(plus ``exc_info=True`` and ``exception`` for ``logger.exception``).

The library logs through the standard ``logging`` module (``resource_router.*`` loggers); this helper
attaches a handler for the block, at DEBUG, and restores the level after. Context variables bound
with structlog (the gateway's ``trace_id``) are merged in, as the replicas' renderer does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        entry: dict[str, Any] = dict(structlog.contextvars.get_contextvars())
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        entry["event"] = getattr(record, "event", record.getMessage())
        entry["log_level"] = record.levelname.lower()
        entry["logger"] = record.name
        if record.exc_info:  # as structlog's capture_logs: a flag, plus the exception itself
            entry["exc_info"] = True
            entry["exception"] = record.exc_info[1]
        self.entries.append(entry)


@contextmanager
def capture_logs(name: str = "resource_router") -> Iterator[list[dict[str, Any]]]:
    """Collect every event of logger ``name`` (and its children) logged inside the block."""
    logger = logging.getLogger(name)
    handler = _Collect()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
