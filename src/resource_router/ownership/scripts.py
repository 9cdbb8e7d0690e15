"""Lua scripts: loaded once from ``lua/`` (shipped in the wheel), registered once per client.

Each operation is one file named verb_noun; ``_prelude.lua`` (shared helpers) is prepended to each.
Scripts run with EVALSHA; redis-py loads a script again when the server answers NOSCRIPT (after a
restart or SCRIPT FLUSH). Scripts answer with a small status code first; ``STATUS_ERRORS`` is the
registry's ``_STATUS_ERRORS`` table maps codes to exceptions, and an unknown code raises.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

from redis.commands.core import AsyncScript

__all__ = [
    "SCRIPT_NAMES",
    "STATUS_INSTANCE_NOT_ALIVE",
    "STATUS_LIMIT_EXCEEDED",
    "STATUS_NOT_OWNER",
    "STATUS_OK",
    "STATUS_OVER_BUDGET",
    "ScriptSet",
    "UnknownScriptStatusError",
    "check_status",
    "script_source",
]

SCRIPT_NAMES: Final = (
    # on the service's slot
    "register_instance",
    "renew_instance",
    "deregister_instance",
    "sweep_instance",
    "reserve_quota",
    "settle_quota",
    "check_partitions",
    # on a partition's slot
    "open_lease",
    "renew_lease",
    "close_lease",
    "register_resources",
    "release_resources",
    "lookup_resource",
    "read_owners",
)

#: The one status table: the first element of every script reply.
STATUS_OK: Final = 0
STATUS_INSTANCE_NOT_ALIVE: Final = 1
STATUS_LIMIT_EXCEEDED: Final = 2
STATUS_NOT_OWNER: Final = 3
STATUS_OVER_BUDGET: Final = 4
KNOWN_STATUSES: Final = frozenset(
    {STATUS_OK, STATUS_INSTANCE_NOT_ALIVE, STATUS_LIMIT_EXCEEDED, STATUS_NOT_OWNER, STATUS_OVER_BUDGET}
)


class UnknownScriptStatusError(RuntimeError):
    """A script answered with a status code this version does not know (mismatched deployment)."""


def _lua_dir() -> Any:
    packaged = importlib.resources.files("resource_router").joinpath("lua")
    if packaged.is_dir():
        return packaged
    # Running from a source checkout (editable install): the scripts live at the repository root.
    checkout = Path(__file__).resolve().parents[3] / "lua"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("the Lua scripts of resource_router were not found (broken install?)")


@cache
def script_source(name: str) -> str:
    """The full source that is sent to Redis: the prelude followed by the operation's file."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"unknown script {name!r}")
    root = _lua_dir()
    prelude = root.joinpath("_prelude.lua").read_text(encoding="utf-8")
    body = root.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return f"{prelude}\n{body}"


@dataclass(frozen=True)
class ScriptSet:
    """The scripts registered on one client (``register_script`` computes each SHA once)."""

    register_instance: AsyncScript
    renew_instance: AsyncScript
    deregister_instance: AsyncScript
    sweep_instance: AsyncScript
    reserve_quota: AsyncScript
    settle_quota: AsyncScript
    check_partitions: AsyncScript
    open_lease: AsyncScript
    renew_lease: AsyncScript
    close_lease: AsyncScript
    register_resources: AsyncScript
    release_resources: AsyncScript
    lookup_resource: AsyncScript
    read_owners: AsyncScript

    @classmethod
    def for_client(cls, client: Any) -> ScriptSet:
        return cls(**{name: client.register_script(script_source(name)) for name in SCRIPT_NAMES})


def check_status(reply: Any, script: str) -> int:
    """Return the status code at the head of a script reply; raise on anything unexpected."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
        raise UnknownScriptStatusError(f"{script}: malformed reply {reply!r:.200}")
    status = reply[0]
    if status not in KNOWN_STATUSES:
        raise UnknownScriptStatusError(f"{script}: unknown status code {status}")
    return status
