"""``request.state`` and ``inst.state(resource_id)``: one resource's state bound to one fencing token.

A handle never learns a newer token: one obtained before a takeover and used after it (a paused
process) writes with the old token, and the store refuses it (``StaleOwnerError``). The refusal is
also told to the instance (``on_stale``), which stops serving the resource at once, as when it
sees a takeover, and confirms in Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resource_router.errors import InvalidRequestError, StaleOwnerError
from resource_router.observability.logs import get_logger
from resource_router.state.backend import StateStore
from resource_router.state.codec import StateCodec

__all__ = ["ResourceState", "StateBinding"]

logger = get_logger(__name__)


class StateBinding:
    """What the state handles of one instance share: the store, the codec, who writes, and what to
    do when a write is refused as stale."""

    __slots__ = ("codec", "instance_id", "on_stale", "service_name", "store")

    def __init__(
        self,
        store: StateStore,
        codec: StateCodec,
        *,
        service_name: str,
        instance_id: str,
        on_stale: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.service_name = service_name
        self.instance_id = instance_id
        self.on_stale = on_stale

    def handle(self, resource_id: str, fencing_token: int) -> ResourceState:
        return ResourceState(self, resource_id, fencing_token)

    def refused(self, exc: StaleOwnerError) -> None:
        logger.warning(
            "state.stale_owner",
            service_name=self.service_name,
            instance_id=self.instance_id,
            resource_id=exc.resource_id,
            fencing_token=exc.fencing_token,
            current_token=exc.current_token,
        )
        if self.on_stale is not None:
            self.on_stale([exc.resource_id])


class ResourceState:
    """The state of ``resource_id`` as written by the holder of ``fencing_token``.

    ``await load()`` gives the value (None when there is none) and sets ``version`` (0: none);
    ``await save(value, version=None)`` returns the new version (``version=n``: only if the stored
    version is ``n``); ``await delete()`` returns whether there was a state.
    """

    __slots__ = ("_binding", "fencing_token", "resource_id", "version")

    def __init__(self, binding: StateBinding, resource_id: str, fencing_token: int) -> None:
        self._binding = binding
        self.resource_id = resource_id
        self.fencing_token = fencing_token
        #: the version last loaded or saved through this handle (0: none yet)
        self.version = 0

    async def load(self) -> Any:
        b = self._binding
        record = await b.store.load(b.service_name, self.resource_id, fencing_token=self.fencing_token)
        if record is None:
            self.version = 0
            return None
        self.version = record.version
        return b.codec.decode(record.data)

    async def save(self, value: Any, *, version: int | None = None) -> int:
        b = self._binding
        _check_version(version)
        data = b.codec.encode(value)
        try:
            self.version = await b.store.save(
                b.service_name,
                self.resource_id,
                data,
                instance_id=b.instance_id,
                fencing_token=self.fencing_token,
                version=version,
            )
        except StaleOwnerError as exc:
            b.refused(exc)
            raise
        return self.version

    async def delete(self, *, version: int | None = None) -> bool:
        b = self._binding
        _check_version(version)
        try:
            existed = await b.store.delete(
                b.service_name,
                self.resource_id,
                instance_id=b.instance_id,
                fencing_token=self.fencing_token,
                version=version,
            )
        except StaleOwnerError as exc:
            b.refused(exc)
            raise
        self.version = 0
        return existed

    def __repr__(self) -> str:
        return f"ResourceState({self.resource_id!r}, fencing_token={self.fencing_token}, version={self.version})"


def _check_version(version: object) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise InvalidRequestError("version must be a non-negative integer (0: no state yet)", field="version")
