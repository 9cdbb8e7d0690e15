"""Trace ids, timing and structured log events shared by every operation.

The library logs through the standard :mod:`logging` module, one logger per module under
``resource_router`` (``resource_router.registry``, ``resource_router.client``, ...), and configures
nothing: with no logging set up by the application nothing is printed (a ``NullHandler`` sits on
``resource_router``), and ``logging.getLogger("resource_router").setLevel(...)`` controls it like any
other library.

Events have stable names (``resource.register``, ``route.call``, ...) and always carry ``operation``
and ``duration_ms``, plus ``trace_id``, ``resource_id`` and ``instance_id`` where they apply. A record
carries them three ways:

* its message, ``event key=value ...``, for plain formatters (``logging.basicConfig``);
* ``record.event`` (the bare name) and ``record.fields`` (a dict), for structured handlers: the CLI,
  the demo and the replicas render them with structlog (:mod:`resource_router.logs`), and JSON
  formatters that copy ``extra`` attributes pick them up as they are.

Nothing is built for a call whose level is off: each method checks ``isEnabledFor`` first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from resource_router.observability import otel
from resource_router.observability.metrics import Metrics

__all__ = [
    "ROOT_LOGGER",
    "LogThrottle",
    "Logger",
    "get_logger",
    "id_fields",
    "logger",
    "timed",
]

ROOT_LOGGER = "resource_router"

# The library never prints by itself: without this, Python's last-resort handler would write
# warnings to stderr in applications that configured no logging.
logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())

_DEBUG, _INFO, _WARNING, _ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR


class _Fields:
    """The ``key=value ...`` part of a message, rendered only when a handler formats the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{key}={_logfmt(value)}" for key, value in self.fields.items())


def _logfmt(value: Any) -> str:
    text = str(value)
    if isinstance(value, str) and (not text or any(c in text for c in ' ="')):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class Logger:
    """A standard-library logger that takes an event name and structured fields.

    ``log.info("resource.register", resource_id="user-1", duration_ms=0.8)``; ``log.bind(**fields)``
    returns a logger that adds ``fields`` to every event. ``log.exception`` keeps the traceback.
    """

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._context = context or {}

    @property
    def name(self) -> str:
        return self._logger.name

    @property
    def stdlib(self) -> logging.Logger:
        """The underlying ``logging.Logger``."""
        return self._logger

    def bind(self, **context: Any) -> Logger:
        return Logger(self._logger, {**self._context, **context})

    def is_enabled_for(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def debug(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(_DEBUG):
            self._emit(_DEBUG, event, fields)

    def info(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(_INFO):
            self._emit(_INFO, event, fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(_WARNING):
            self._emit(_WARNING, event, fields)

    def error(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(_ERROR):
            self._emit(_ERROR, event, fields)

    def exception(self, event: str, /, **fields: Any) -> None:
        """An error event with the traceback of the exception being handled."""
        if self._logger.isEnabledFor(_ERROR):
            self._emit(_ERROR, event, fields, exc_info=True)

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._context:
            fields = {**self._context, **fields}
        otel_trace_id = otel.current_trace_id()
        if otel_trace_id is not None:  # an OpenTelemetry span is active: logs name its trace
            fields = {**fields, "otel_trace_id": otel_trace_id}
        extra = {"event": event, "fields": fields}
        # stacklevel 3: the record names the library function that logged, not this class
        if fields:
            self._logger.log(level, f"{event} %s", _Fields(fields), exc_info=exc_info, extra=extra, stacklevel=3)
        else:
            self._logger.log(level, event, exc_info=exc_info, extra=extra, stacklevel=3)


class LogThrottle:
    """Rate-limits one kind of event that outsiders can cause (garbage on a channel): at most
    ``burst`` pass per ``interval`` seconds; the rest are only counted, and the next one that
    passes says how many were left out (``allow()`` returns that count, None when suppressed).
    Metrics still count every occurrence."""

    __slots__ = ("_count", "_suppressed", "_window_end", "burst", "interval")

    def __init__(self, burst: int = 10, interval: float = 10.0) -> None:
        self.burst = burst
        self.interval = interval
        self._count = 0
        self._suppressed = 0
        self._window_end = 0.0

    def allow(self) -> int | None:
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end = now + self.interval
            self._count = 0
        if self._count < self.burst:
            self._count += 1
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed
        self._suppressed += 1
        return None


def get_logger(name: str = ROOT_LOGGER) -> Logger:
    """The structured logger of a library module (``get_logger(__name__)``)."""
    return Logger(logging.getLogger(name))


#: The package-level logger (modules use their own: ``get_logger(__name__)``).
logger = get_logger()


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
