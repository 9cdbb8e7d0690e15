"""The admission rule: may this instance serve this request now? One object, one rule.

A request is served when the instance is serving, its local lease has not run out by its own clock,
and (for a resource) it owns the resource, with the fencing token the request names if it names one.
Otherwise the answer is a ``Refusal``, never a number: fencing tokens and refusals do not share a slot.

``admit`` gives the verdict and the view's ``epoch`` it was taken at; ``still`` says whether a verdict
taken earlier still holds (the epoch did not move and the lease clock has not run out), so a request
that got its slot at once is admitted once, and one that waited (for a slot, in a mailbox, for its
``on_activate``) is admitted again.
"""

from __future__ import annotations

from enum import Enum

from resource_router.ownership.view import OwnershipView

__all__ = ["Admission", "Refusal", "Verdict"]


class Refusal(Enum):
    """Why a request is not served as it is."""

    NOT_SERVING = "not_serving"  # stopping, not started, or the local lease ran out: "not owner"
    NOT_OWNED = "not_owned"  # the instance does not own the resource (an activation may claim it)
    STALE_TOKEN = "stale_token"  # it owns the resource under another grant than the request names
    MOVING = "moving"  # being released, handed over, adopted or confirmed: the request waits for it


#: A fencing token (serve; None for a call without a resource), or why not.
Verdict = int | None | Refusal


class Admission:
    """The rule over one instance's ``OwnershipView`` (see the module docstring)."""

    __slots__ = ("_view",)

    def __init__(self, view: OwnershipView) -> None:
        self._view = view

    def admit(self, resource_id: str | None, expected_token: int | None) -> tuple[Verdict, int]:
        """The verdict for a request now, and the epoch it was taken at."""
        view = self._view
        epoch = view.epoch
        if not view.serving or view.clock() >= view.lease_until:
            return Refusal.NOT_SERVING, epoch
        if resource_id is None:
            return None, epoch
        token = view.owned.get(resource_id)
        if token is None:
            if view.waiting(resource_id):
                return Refusal.MOVING, epoch
            return Refusal.NOT_OWNED, epoch
        if expected_token is not None and expected_token != token:
            return Refusal.STALE_TOKEN, epoch
        return token, epoch

    def still(self, epoch: int) -> bool:
        """True when a verdict taken at ``epoch`` holds now."""
        view = self._view
        return view.epoch == epoch and view.clock() < view.lease_until
