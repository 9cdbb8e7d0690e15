"""The state store seam: what every store of per-resource state offers (Redis, PostgreSQL).

A store keeps one record per (namespace, service, resource): the encoded value, a version (1 after
the first save, one more per save) and the fencing token it was written under. Writes carry the
writer's instance id and fencing token; a store refuses, with ``StaleOwnerError`` and writing
nothing, a write whose token is lower than what it knows of the resource (Redis: the current grant
record; PostgreSQL: the row's token, raised by every newer owner's first read or write). With an
expected ``version`` a write is a compare-and-set (``StateVersionConflictError``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from resource_router.ownership.registry import ResourceRegistry
    from resource_router.transport.hub import PubSubHub

__all__ = ["StateRecord", "StateStore"]


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A resource's stored state: the encoded value, its version and the token it was written under."""

    data: bytes
    version: int
    fencing_token: int


class StateStore(ABC):
    """Per-resource state; see the module docstring. ``bind`` gives the store an instance (or a
    replica) uses: the same object when the store needs nothing of the registry."""

    #: names the store in errors and logs (``redis``, ``postgres``)
    name: ClassVar[str] = "state"

    def bind(self, registry: ResourceRegistry) -> StateStore:
        """The store as used with ``registry`` (its Redis, its namespace). No I/O."""
        return self

    def attach(self, hub: PubSubHub | None) -> None:  # noqa: B027 - only the Redis store uses the hub
        """The running instance's pub/sub hub (None when it stops): a Redis store sends its scripts
        on the hub's pipelined command connection, as owner lookups do."""

    @abstractmethod
    async def load(
        self, service_name: str, resource_id: str, *, fencing_token: int | None = None
    ) -> StateRecord | None:
        """The stored state, or None. ``fencing_token``: the reader is an owner holding it (a store
        that fences by its own rows records it, so that an older owner's writes fail from now on)."""

    @abstractmethod
    async def save(
        self,
        service_name: str,
        resource_id: str,
        data: bytes,
        *,
        instance_id: str,
        fencing_token: int,
        version: int | None = None,
    ) -> int:
        """Write ``data``; the new version. ``StaleOwnerError``, ``StateVersionConflictError``."""

    @abstractmethod
    async def delete(
        self,
        service_name: str,
        resource_id: str,
        *,
        instance_id: str,
        fencing_token: int,
        version: int | None = None,
    ) -> bool:
        """Remove the state; True when there was one. Refused as ``save`` is."""

    async def aclose(self) -> None:  # noqa: B027 - most stores hold nothing of their own
        """Release what the store holds (connections it opened itself)."""
