"""Placement strategies: which volunteer a resource nobody owns is activated on.

An instance started with ``accept_placement=True`` is a **volunteer**: it is listed in the service's
volunteer hash ``rr:{S}:volunteers`` (``ownership/volunteers.py``) while it is alive and not draining.
A call for a resource that has no owner goes to a volunteer chosen by the service's strategy, which
claims the resource through the registry's atomic grant and serves the call.

Strategies (the ``placement=`` of the volunteers; when they disagree, the most common one wins):

* ``"hash"`` (default): rendezvous hashing. Each volunteer ``v`` scores ``blake2b-64(resource_id + NUL
  + v)`` (big-endian unsigned); the highest score wins. Every caller computes the same choice without
  talking to anyone, and when a volunteer joins or leaves only the resources it wins or held move.
* ``"least_loaded"``: the volunteer owning the smallest share of its limit (ties: the hash order).
* ``"random"``: a uniformly random volunteer.

The ranking is a preference order: a volunteer that turns out full (its per-instance limit), dead or
draining is skipped for the next one.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from typing import Final

from resource_router.errors import InvalidRequestError
from resource_router.ownership.volunteers import DEFAULT_STRATEGY, Volunteer

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "rank",
    "rendezvous_score",
    "service_strategy",
    "validate_strategy",
]

STRATEGIES: Final = ("hash", "least_loaded", "random")


def validate_strategy(value: object) -> str:
    if value not in STRATEGIES:
        raise InvalidRequestError(
            f"placement must be one of {', '.join(map(repr, STRATEGIES))}, not {value!r}", field="placement"
        )
    assert isinstance(value, str)
    return value


def rendezvous_score(resource_id: str, instance_id: str) -> int:
    """The rendezvous (highest random weight) score of ``instance_id`` for ``resource_id``."""
    data = f"{resource_id}\x00{instance_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def service_strategy(volunteers: Sequence[Volunteer]) -> str:
    """The strategy most volunteers advertise (ties: the first of ``STRATEGIES``)."""
    if not volunteers:
        return DEFAULT_STRATEGY
    counts = Counter(v.placement for v in volunteers if v.placement in STRATEGIES)
    if not counts:
        return DEFAULT_STRATEGY
    best = max(counts.values())
    return next(s for s in STRATEGIES if counts.get(s) == best)


def rank(
    strategy: str, resource_id: str, volunteers: Sequence[Volunteer], rng: random.Random | None = None
) -> list[Volunteer]:
    """``volunteers`` in order of preference for ``resource_id``; those known to be full come last."""
    if strategy == "random":
        order = list(volunteers)
        (rng or random).shuffle(order)
    else:
        by_hash = sorted(volunteers, key=lambda v: rendezvous_score(resource_id, v.instance_id), reverse=True)
        if strategy == "least_loaded":
            order = sorted(by_hash, key=lambda v: v.owned / v.limit if v.limit else float(v.owned))
        else:
            order = by_hash
    return [v for v in order if not v.full] + [v for v in order if v.full]
