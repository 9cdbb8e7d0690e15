"""Lua scripts: loaded once from ``lua/`` (shipped in the wheel), registered once per client.

Each operation is one file named verb_noun; ``_prelude.lua`` (shared helpers) is prepended to each.
Scripts run with EVALSHA; redis-py loads a script again when the server answers NOSCRIPT (after a
restart or SCRIPT FLUSH). Scripts answer with a ``ScriptStatus`` code first (``status.py``):
``check_status`` turns it into the enum, and an unknown code raises ``UnknownScriptStatusError``.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

from redis.commands.core import AsyncScript

from resource_router.errors import UnknownScriptStatusError
from resource_router.status import ScriptStatus

__all__ = [
    "SCRIPT_NAMES",
    "WRITE_SCRIPTS",
    "ScriptSet",
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
    "raise_fence",
    "load_state",
    "save_state",
    "delete_state",
)
#: The scripts that grant, renew, release or take over ownership, and those that write a resource's
#: state: with ``min_replicas`` each is followed by ``WAIT`` (``durable.py``).
WRITE_SCRIPTS: Final = (
    "register_instance",
    "renew_instance",
    "deregister_instance",
    "sweep_instance",
    "open_lease",
    "renew_lease",
    "close_lease",
    "register_resources",
    "release_resources",
    "raise_fence",
    "save_state",
    "delete_state",
)


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
    raise_fence: AsyncScript
    load_state: AsyncScript
    save_state: AsyncScript
    delete_state: AsyncScript

    @property
    def shas(self) -> dict[str, str]:
        """Each script's SHA1, by name."""
        return {name: getattr(self, name).sha for name in SCRIPT_NAMES}

    @classmethod
    def for_client(cls, client: Any) -> ScriptSet:
        return cls(**{name: client.register_script(script_source(name)) for name in SCRIPT_NAMES})


_BY_CODE: Final = {status.value: status for status in ScriptStatus}  # a dict: 10x cheaper than ScriptStatus(code)


def check_status(reply: Any, script: str) -> ScriptStatus:
    """The status at the head of a script reply; ``UnknownScriptStatusError`` on anything unexpected."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], int):
        raise UnknownScriptStatusError(f"{script}: malformed reply {reply!r:.200}")
    status = _BY_CODE.get(reply[0])
    if status is None:
        raise UnknownScriptStatusError(f"{script}: unknown status code {reply[0]}")
    return status
