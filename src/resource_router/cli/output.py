"""What the command line prints: exit codes, messages on stderr, tables and JSON on stdout.

A reader that goes away (``| head``) is not an error: printing raises ``StdoutClosed`` and the command
exits 0. Ids and metadata fold at narrow widths; numbers and times never split.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from resource_router.cli.exit_codes import EXIT_OK
from resource_router.models import InstanceInfo, OwnershipEvent, Resource
from resource_router.ownership.volunteers import Volunteer

__all__ = [
    "StdoutClosed",
    "echo",
    "err",
    "event_line",
    "events_table",
    "fail",
    "instances_table",
    "out",
    "print_json",
    "problems",
    "render",
    "resources_table",
    "stdout_gone",
]


def out() -> Console:
    return Console(soft_wrap=False)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int, hint: str | None = None) -> NoReturn:
    console = err()
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    if hint:
        console.print(hint, markup=False, style="dim")
    raise typer.Exit(code)


def problems(exc: ValidationError) -> str:
    """A pydantic validation error on one line: ``field: message; ...``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class StdoutClosed(Exception):
    """The reader of our output went away (``| head``): not an error, nothing more to print."""


def write(emit: Callable[[], None]) -> None:
    """Print something on stdout; a closed pipe becomes :class:`StdoutClosed`."""
    try:
        emit()
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise StdoutClosed from exc


def echo(line: str) -> None:
    write(lambda: print(line))


def render(renderable: Any) -> None:
    write(lambda: out().print(renderable))


def stdout_gone() -> NoReturn:
    """Stop quietly: point stdout at /dev/null so that the interpreter's last flush finds no broken
    pipe to complain about, and exit 0."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(EXIT_OK)


def print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def meta(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False) if value else ""


def new_table(title: str, columns: dict[str, str]) -> Table:
    """Ids and metadata fold at narrow widths; ``fixed`` columns (numbers, times) never split."""
    table = Table(title=title, title_justify="left")
    for name, kind in columns.items():
        if kind == "text":
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, no_wrap=True, justify="right" if kind == "number" else "left")
    return table


def fit(table: Table, rows: list[list[str]]) -> Table:
    """Add ``rows``; columns that never split are given the width of their widest cell."""
    for column_index, column in enumerate(table.columns):
        if column.no_wrap and rows:
            column.min_width = max(len(row[column_index]) for row in rows)
    for row in rows:
        table.add_row(*row)
    return table


def resources_table(title: str, resources: Iterable[Resource]) -> Table:
    table = new_table(
        title,
        {
            "resource_id": "text",
            "owner_instance_id": "text",
            "fencing_token": "number",
            "registered_at": "time",
            "metadata": "text",
        },
    )
    rows = [
        [r.resource_id, r.owner_instance_id, str(r.fencing_token), ts(r.registered_at), meta(r.metadata)]
        for r in resources
    ]
    return fit(table, rows)


def instances_table(title: str, instances: Iterable[InstanceInfo], volunteers: dict[str, Volunteer]) -> Table:
    table = new_table(
        title,
        {
            "instance_id": "text",
            "resources": "number",
            "ttl": "number",
            "placement": "text",
            "last_heartbeat": "time",
            "registered_at": "time",
            "metadata": "text",
        },
    )
    rows = [
        [
            i.instance_id,
            "" if i.resource_count is None else str(i.resource_count),
            f"{i.ttl:g}s",
            volunteers[i.instance_id].placement if i.instance_id in volunteers else "-",
            ts(i.last_heartbeat),
            ts(i.registered_at),
            meta(i.metadata),
        ]
        for i in instances
    ]
    return fit(table, rows)


def event_time(event: OwnershipEvent) -> str:
    return ts(datetime.fromtimestamp(event.ts_ms / 1000.0, tz=UTC)) if event.ts_ms else ""


def event_line(event: OwnershipEvent) -> str:
    parts = [event_time(event), event.type, f"instance={event.instance_id}"]
    if event.reason:
        parts.append(f"reason={event.reason}")
    if event.resource_ids:
        shown = ",".join(event.resource_ids[:20])
        more = "" if len(event.resource_ids) <= 20 else f",...(+{len(event.resource_ids) - 20})"
        parts.append(f"resources={shown}{more}")
    if event.previous_owners:
        parts.append("previous_owners=" + ",".join(f"{r}:{o}" for r, o in event.previous_owners.items()))
    if event.trace_id:
        parts.append(f"trace_id={event.trace_id}")
    return " ".join(p for p in parts if p)


def events_table(title: str, events: Iterable[OwnershipEvent]) -> Table:
    table = new_table(
        title,
        {
            "time": "time",
            "type": "text",
            "instance_id": "text",
            "reason": "text",
            "resources": "text",
            "trace_id": "text",
        },
    )
    rows = [
        [event_time(e), e.type, e.instance_id, e.reason or "", ",".join(e.resource_ids), e.trace_id or ""]
        for e in events
    ]
    return fit(table, rows)
