"""Every ``reason`` the library speaks of, in one vocabulary (string enums: they compare equal to,
and travel as, their plain text).

* ``LossReason``: why an instance stopped serving a resource it had (``on_deactivate``, logs);
* ``RefusalReason``: why an instance answered "not owner" (``why`` of the reply, ``docs/protocol.md``);
* ``EventReason``: the ``reason`` of an ownership event (written by the Lua scripts, ``docs/protocol.md`` §7).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EventReason", "LossReason", "RefusalReason"]


class LossReason(StrEnum):
    """Why ``on_deactivate(resource_id, reason)`` runs."""

    RELEASED = "released"  # release_resource
    DRAINED = "drained"  # handed to another instance by drain()
    REBALANCED = "rebalanced"  # handed to a volunteer that joined (rebalance=True)
    IDLE = "idle"  # not called for idle_timeout seconds
    EXPIRED = "expired"  # the lease ran out (in Redis, or by the local clock)
    TAKEN = "taken"  # taken over by force by another instance
    STOPPED = "stopped"  # the instance stopped gracefully and released everything
    FAILOVER = "failover"  # another Redis master answers now, and it does not have the grant


class RefusalReason(StrEnum):
    """The ``why`` of a "not owner" reply (absent when the instance simply does not own the resource)."""

    CONFLICT = "conflict"  # another instance won the activation (``to`` names it)
    FULL = "full"  # the volunteer is at its per-instance limit (try another one)
    DRAINING = "draining"  # the instance takes no activations (draining, or its lease is being renewed)
    MOVED = "moved"  # the resource was handed over (``to`` names the new owner when there is one)


class EventReason(StrEnum):
    """The ``reason`` of an ownership event in the audit stream and on the events channels."""

    REGISTERED = "registered"
    FORCED = "forced"
    RELEASED = "released"
    DEREGISTERED = "deregistered"
    ROLLED_BACK = "rolled_back"
    INSTANCE_OFFLINE = "instance_offline"
    EXPIRED = "expired"
