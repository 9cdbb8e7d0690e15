"""Every status code, in one vocabulary: what a Lua script answers, and what a reply on the wire says.

The same names mean the same thing on both sides of the library: ``OK`` (done), ``NOT_OWNER``
(the instance asking does not own what it named). Lua scripts start every reply with a
``ScriptStatus`` code (``lua/_prelude.lua`` defines the same names, ``RR_OK`` ..., and a test keeps the
two equal); a routed call's reply carries a ``ReplyStatus`` (``docs/protocol.md`` §2). Both are enums
of plain values (``int`` and ``str``): they compare equal to, and travel as, the codes themselves.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["ReplyStatus", "ScriptStatus"]


class ScriptStatus(IntEnum):
    """The first element of every Lua script's reply."""

    OK = 0
    INSTANCE_NOT_ALIVE = 1  # the instance's lease is gone: register it first
    LIMIT_EXCEEDED = 2  # the per-instance limit would be exceeded: nothing was registered
    NOT_OWNER = 3  # a release names ids that other live instances own: nothing was released
    OVER_BUDGET = 4  # more new grants than the caller reserved (a race: roll back and try again)
    STALE_OWNER = 5  # a state write whose fencing token is not the resource's current grant: nothing written
    VERSION_CONFLICT = 6  # a state compare-and-set whose expected version is not the stored one: nothing written


class ReplyStatus(StrEnum):
    """The ``s`` field of a reply to a routed call."""

    OK = "ok"  # ``r`` holds the result
    ERROR = "error"  # ``e`` holds the error map
    NOT_OWNER = "not_owner"  # the request was not run (``to`` and ``why`` may say where and why)
