"""Log rendering for the applications this package ships: the CLI, the demo and the router replicas.

The library itself only emits standard :mod:`logging` records (see :mod:`resource_router.tracing`).
These faces render them, uvicorn's and their own, with structlog: one JSON object per line (``json``,
for replicas) or readable lines (``console``), on stderr, with the library's event name and
structured fields as keys and the request's context variables (``trace_id``) merged in.

Needs structlog (in the ``cli`` and ``gateway`` extras).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from resource_router.errors import InvalidRequestError

try:
    import structlog
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"log rendering needs the 'cli' extra ({_exc.name} is not installed): pip install 'resource-router[cli]'"
    ) from _exc

__all__ = ["LOG_FORMATS", "add_library_fields", "configure_logging"]

LOG_FORMATS = ("json", "console")
_HANDLER_NAME = "resource-router"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the log call (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def add_library_fields(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: a library record's bare event name and its fields become keys of the line."""
    record = event_dict.get("_record")
    event = getattr(record, "event", None)
    fields = getattr(record, "fields", None)
    if isinstance(event, str) and isinstance(fields, dict):
        event_dict["event"] = event
        event_dict.update(fields)
    return event_dict


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Route stdlib logging (the library's, uvicorn's) and structlog through one renderer on stderr.

    ``fmt`` is ``json`` (one JSON object per line, for ``serve``) or ``console`` (readable). Every line
    carries the context variables bound for the request (``trace_id``). The library never calls this:
    applications do (the CLI, the demo and the replicas do it for themselves).
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_library_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Any]
    if fmt == "json":
        final = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(default=str)]
    elif fmt == "console":
        # plain tracebacks: rich's default ones print local variables (request bodies, URLs) and are slow
        final = [
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback)
        ]
    else:
        raise InvalidRequestError(f"log format must be 'json' or 'console', not {fmt!r}", field="log_format")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise InvalidRequestError(f"unknown log level {level!r}", field="log_level")
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
