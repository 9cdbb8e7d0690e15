"""The routing policy of one call to a resource: what to do after its target refused or did not listen.

The caller (``client.py``) sends to a target and hands every refusal here. The rules, in order:

* more than ``MAX_HOPS`` sends without an answer: give up (503, ``OwnerUnavailableError``);
* a "not owner" answer that names where the resource went (``to``: handed over by a drain or a
  rebalance, or another volunteer won its activation): follow it at once;
* a volunteer asked to activate that cannot (full, draining, not listening): skip it, resolve again
  (the next volunteer in the strategy's order);
* a target from the owner cache: resolve again (the entry was stale);
* "not owner" from the owner Redis named: resolve once more; a second refusal gives up;
* nobody listening on the channel of the owner Redis named: look the owner up again; a new owner is
  sent to, the same one (or none: its lease ended, then the resource is activated) is given up on.

Giving up raises at once, or with ``wait_for_owner`` pauses (25 ms doubling to 250 ms) and starts over
until the call's deadline, when the last error is raised.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Final

from resource_router.errors import OwnerUnavailableError, ResourceRouterError
from resource_router.reasons import RefusalReason
from resource_router.routing.call import Call, Target
from resource_router.routing.protocol import Reply

__all__ = ["MAX_HOPS", "Attempts", "Next"]

#: Sends of one resource call before it gives up (redirects, re-resolutions, volunteers tried).
MAX_HOPS: Final = 8
#: ``wait_for_owner``: pauses between attempts grow from the first to the last.
WAIT_FIRST: Final = 0.025
WAIT_LAST: Final = 0.25


class Next(Enum):
    """What the caller does after a refusal (besides following a redirect)."""

    RESOLVE = "resolve"  # look the owner up again (or choose a volunteer)
    RECHECK = "recheck"  # look the owner up and compare it with the silent target
    GIVE_UP = "give_up"  # ``Attempts.give_up`` with ``Attempts.error``


class Attempts:
    """The state of one call's attempts (see the module docstring)."""

    __slots__ = ("call", "error", "hops", "refusals", "skipped", "waits")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.hops = 0
        self.waits = 0
        self.refusals = 0  # "not owner" answers from owners Redis named
        #: volunteers that cannot take the resource now -> why ("full" or "unavailable")
        self.skipped: dict[str, str] = {}
        self.error: ResourceRouterError | None = None

    def after(self, target: Target, reply: Reply | None) -> Target | Next:
        """``target`` refused (``reply`` is its "not owner") or nobody listened (``reply`` is None):
        the next target, or what to do instead."""
        self.hops += 1
        redirect = None if reply is None else reply.redirect
        if self.hops > MAX_HOPS:
            return self._fail(unavailable(self.call, target.instance_id, reply))
        if redirect is not None and redirect != target.instance_id:
            return Target(redirect, fresh=True, activate=True)  # moved, or another volunteer won: follow
        if target.activate:
            # This volunteer cannot take it (full, draining, dead): the next one, after a new lookup.
            full = reply is not None and reply.reason == RefusalReason.FULL
            self.skipped[target.instance_id] = "full" if full else "unavailable"
            return Next.RESOLVE
        if not target.fresh:
            return Next.RESOLVE  # a stale cache entry
        if reply is not None:
            self.refusals += 1
            if self.refusals <= 1:
                return Next.RESOLVE
            return self._fail(unavailable(self.call, target.instance_id, reply))
        return Next.RECHECK

    def rechecked(self, target: Target, owner: str | None) -> Target | Next:
        """The owner Redis names now for a target that did not listen (None: nobody, its lease ended)."""
        if owner is None:
            return Next.RESOLVE  # the dead owner's lease ended: activate it (or 404)
        if owner != target.instance_id:
            return Target(owner, fresh=True)
        return self._fail(unavailable(self.call, owner, None))

    def _fail(self, error: ResourceRouterError) -> Next:
        self.error = error
        return Next.GIVE_UP

    async def give_up(self, error: ResourceRouterError | None = None) -> None:
        """Raise ``error`` (default: the one recorded); with ``wait_for_owner``, pause and start over
        instead, until the deadline is too close for another pause."""
        error = error or self.error
        assert error is not None
        if not self.call.wait_for_owner:
            raise error
        pause = min(WAIT_LAST, WAIT_FIRST * (2**self.waits))
        if self.call.deadline - asyncio.get_running_loop().time() <= pause:
            raise error
        await asyncio.sleep(pause)
        self.waits += 1
        self.hops = self.refusals = 0
        self.skipped.clear()
        self.error = None


def unavailable(call: Call, owner: str, reply: Reply | None) -> OwnerUnavailableError:
    """503: the owner of the call's resource did not listen, or refused it."""
    if reply is None:
        why = "nobody is listening on its channel"
    elif reply.reason == RefusalReason.DRAINING:
        why = "it takes no activations (draining)"
    else:
        why = "it refused the request (not owner)"
    return OwnerUnavailableError(
        f"owner {owner!r} of resource {call.resource_id!r} (service {call.service_name!r}) is unavailable: {why}",
        resource_id=call.resource_id,
        instance_id=owner,
    )
