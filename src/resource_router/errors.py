"""The exception tree. Every error carries an HTTP-like ``code``; the gateway maps it to a status.

::

    ResourceRouterError                      (base; code 500 unless a subclass says otherwise)
    ├── InvalidRequestError          400     bad id, bad params, payload too large   .field
    │   └── StateTooLargeError       413     an encoded state over max_state_bytes   .field .size .limit
    ├── ResourceReleaseError         403     releasing what another instance owns    .owners
    ├── ResourceNotFoundError        404     no owner for the resource               .resource_id
    ├── MethodNotFoundError          404     the owner has no handler for the method .method
    ├── ResourceConflictError        409     conflicts must fail (callers, gateway)  .conflicts
    ├── StaleOwnerError              409     a state write by a former owner          .resource_id .fencing_token
    │                                        (error_code ``stale_owner``)             .current_token
    ├── StateVersionConflictError    409     a state compare-and-set lost             .resource_id .expected
    │                                        (error_code ``version_conflict``)        .actual
    ├── InstanceNotAliveError        410     instance not registered or expired      .instance_id
    ├── ResourceLimitExceededError   429     per-instance limit                      .limit .current .requested
    ├── RemoteHandlerError           500     the remote handler raised               .remote_type .remote_message
    │   └── ActivationError          500     on_activate raised (instance side)      .resource_id .cause
    ├── ProtocolError                400     a message that cannot be served          .reason .request_id ...
    ├── UnknownScriptStatusError     500     a Lua script answered an unknown status (mismatched deployment)
    ├── OwnerUnavailableError        503     owner registered but not listening      .resource_id .instance_id
    ├── ServiceUnavailableError      503     no live instance of the service         .service_name
    ├── RedisUnavailableError        503     Redis unreachable after retries         .operation
    │   └── DurabilityError          503     too few replicas acknowledged a write   .acknowledged .required
    ├── StateStoreUnavailableError   503     a state store (PostgreSQL) unreachable  .operation .store
    └── RouteTimeoutError            504     no reply before the timeout             .timeout

Redis exceptions never reach callers raw: they are wrapped with ``raise ... from exc``.

Besides the numeric ``code``, an error may carry a stable string ``error_code`` (``stale_owner``,
``version_conflict``): two errors that share a status are told apart by it in ``to_dict()`` and in
the bodies of the replicas, without parsing the class name (``type``).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ActivationError",
    "DurabilityError",
    "InstanceNotAliveError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "OwnerUnavailableError",
    "ProtocolError",
    "RedisUnavailableError",
    "RemoteHandlerError",
    "ResourceConflictError",
    "ResourceLimitExceededError",
    "ResourceNotFoundError",
    "ResourceReleaseError",
    "ResourceRouterError",
    "RouteTimeoutError",
    "ServiceUnavailableError",
    "StaleOwnerError",
    "StateStoreUnavailableError",
    "StateTooLargeError",
    "StateVersionConflictError",
    "UnknownScriptStatusError",
    "error_from_dict",
]


class ResourceRouterError(Exception):
    """Base of every error the library raises. ``code`` is HTTP-like; ``to_dict()`` is the wire form."""

    code: ClassVar[int] = 500
    #: A stable string code for errors that share a status (``stale_owner``); None for most.
    error_code: ClassVar[str | None] = None
    #: Names of the extra attributes carried into ``to_dict()`` and back through ``error_from_dict``.
    detail_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def type(self) -> str:
        return type(self).__name__

    def details(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.detail_fields}

    def to_dict(self) -> dict[str, Any]:
        body = {"type": self.type, "code": self.code, "message": self.message, **self.details()}
        if self.error_code is not None:
            body["error_code"] = self.error_code
        return body

    def __repr__(self) -> str:
        return f"{self.type}(code={self.code}, message={self.message!r})"


class InvalidRequestError(ResourceRouterError):
    code = 400
    detail_fields: ClassVar[tuple[str, ...]] = ("field",)

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StateTooLargeError(InvalidRequestError):
    """An encoded state of ``size`` bytes is over ``max_state_bytes`` (``limit``): nothing was stored."""

    code = 413
    detail_fields: ClassVar[tuple[str, ...]] = ("field", "size", "limit")

    def __init__(self, message: str, *, size: int, limit: int, field: str | None = "state") -> None:
        super().__init__(message, field=field)
        self.size = size
        self.limit = limit


class ResourceReleaseError(ResourceRouterError):
    code = 403
    detail_fields = ("owners",)

    def __init__(self, message: str, *, owners: dict[str, str]) -> None:
        super().__init__(message)
        self.owners = dict(owners)


class ResourceNotFoundError(ResourceRouterError):
    code = 404
    detail_fields = ("resource_id", "service_name")

    def __init__(self, message: str, *, resource_id: str, service_name: str | None = None) -> None:
        super().__init__(message)
        self.resource_id = resource_id
        self.service_name = service_name


class MethodNotFoundError(ResourceRouterError):
    code = 404
    detail_fields = ("method",)

    def __init__(self, message: str, *, method: str) -> None:
        super().__init__(message)
        self.method = method


class ResourceConflictError(ResourceRouterError):
    code = 409
    detail_fields = ("conflicts",)

    def __init__(self, message: str, *, conflicts: dict[str, str]) -> None:
        super().__init__(message)
        self.conflicts = dict(conflicts)


class StaleOwnerError(ResourceRouterError):
    """A state write (save or delete) carried a fencing token that is not the resource's current
    grant: another instance took the resource over (or the writer's lease ran out), so the writer is
    a former owner. Nothing was written; the instance stops serving the resource. ``current_token``
    is the current grant's token (None when nobody holds a live grant)."""

    code = 409
    error_code = "stale_owner"
    detail_fields = ("resource_id", "fencing_token", "current_token")

    def __init__(
        self, message: str, *, resource_id: str, fencing_token: int | None, current_token: int | None = None
    ) -> None:
        super().__init__(message)
        self.resource_id = resource_id
        self.fencing_token = fencing_token
        self.current_token = current_token


class StateVersionConflictError(ResourceRouterError):
    """``save(value, version=n)`` (or ``delete(version=n)``) found another version stored: nothing
    was written. ``expected`` is ``n``, ``actual`` the stored version (0: no state)."""

    code = 409
    error_code = "version_conflict"
    detail_fields = ("resource_id", "expected", "actual")

    def __init__(self, message: str, *, resource_id: str, expected: int, actual: int) -> None:
        super().__init__(message)
        self.resource_id = resource_id
        self.expected = expected
        self.actual = actual


class InstanceNotAliveError(ResourceRouterError):
    code = 410
    detail_fields = ("instance_id", "service_name")

    def __init__(self, message: str, *, instance_id: str, service_name: str | None = None) -> None:
        super().__init__(message)
        self.instance_id = instance_id
        self.service_name = service_name


class ResourceLimitExceededError(ResourceRouterError):
    code = 429
    detail_fields = ("limit", "current", "requested")

    def __init__(self, message: str, *, limit: int, current: int, requested: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.current = current
        self.requested = requested


class RemoteHandlerError(ResourceRouterError):
    code = 500
    detail_fields = ("remote_type", "remote_message")

    def __init__(self, message: str, *, remote_type: str, remote_message: str) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message


class ActivationError(RemoteHandlerError):
    """``on_activate`` raised ``cause`` for ``resource_id`` (the instance releases the resource and
    answers the request with the ``RemoteHandlerError`` it is)."""

    def __init__(self, resource_id: str, cause: BaseException) -> None:
        message = f"on_activate({resource_id!r}) raised {type(cause).__name__}: {cause}"
        super().__init__(message, remote_type=type(cause).__name__, remote_message=str(cause))
        self.resource_id = resource_id
        self.cause = cause


class ProtocolError(ResourceRouterError):
    """A message that cannot be served. ``reason`` labels the drop metric (``malformed``, ``foreign``,
    ``version``, ``oversized``); ``request_id`` and ``reply_channel`` are set when they could be read,
    so that the receiver can still answer with an ``InvalidRequestError`` (``to_error``)."""

    code = 400

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        request_id: str | None = None,
        reply_channel: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id
        self.reply_channel = reply_channel
        self.trace_id = trace_id

    def to_error(self) -> InvalidRequestError:
        return InvalidRequestError(self.message, field="v" if self.reason == "version" else "request")


class UnknownScriptStatusError(ResourceRouterError):
    """A Lua script answered with a status code this version does not know (a mismatched deployment:
    scripts of another version loaded under the same names)."""


class OwnerUnavailableError(ResourceRouterError):
    code = 503
    detail_fields = ("resource_id", "instance_id")

    def __init__(self, message: str, *, resource_id: str | None, instance_id: str) -> None:
        super().__init__(message)
        self.resource_id = resource_id
        self.instance_id = instance_id


class ServiceUnavailableError(ResourceRouterError):
    code = 503
    detail_fields = ("service_name",)

    def __init__(self, message: str, *, service_name: str) -> None:
        super().__init__(message)
        self.service_name = service_name


class RedisUnavailableError(ResourceRouterError):
    """Redis could not be reached (after retries, for idempotent operations)."""

    code = 503
    detail_fields: ClassVar[tuple[str, ...]] = ("operation",)

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class DurabilityError(RedisUnavailableError):
    """A write of ownership (a grant, a renewal, a release, a takeover) was applied by the master but
    acknowledged by fewer replicas than ``min_replicas`` within ``replica_timeout``: it is not
    reported as done, since a failover now could lose it (README, "High availability")."""

    detail_fields: ClassVar[tuple[str, ...]] = ("operation", "acknowledged", "required")

    def __init__(self, message: str, *, operation: str, acknowledged: int, required: int) -> None:
        super().__init__(message, operation=operation)
        self.acknowledged = acknowledged
        self.required = required


class StateStoreUnavailableError(ResourceRouterError):
    """A state store other than Redis (PostgreSQL) could not be reached or failed: nothing is known
    to be written. ``store`` names it (``postgres``), ``operation`` the step (``save``, ``load``...)."""

    code = 503
    detail_fields = ("operation", "store")

    def __init__(self, message: str, *, operation: str, store: str) -> None:
        super().__init__(message)
        self.operation = operation
        self.store = store


class RouteTimeoutError(ResourceRouterError):
    code = 504
    detail_fields = ("timeout",)

    def __init__(self, message: str, *, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


_BY_NAME: dict[str, type[ResourceRouterError]] = {
    cls.__name__: cls
    for cls in (
        ResourceRouterError,
        InvalidRequestError,
        ResourceReleaseError,
        ResourceNotFoundError,
        MethodNotFoundError,
        ResourceConflictError,
        InstanceNotAliveError,
        ResourceLimitExceededError,
        RemoteHandlerError,
        OwnerUnavailableError,
        ServiceUnavailableError,
        RedisUnavailableError,
        DurabilityError,
        RouteTimeoutError,
        StaleOwnerError,
        StateVersionConflictError,
        StateTooLargeError,
        StateStoreUnavailableError,
    )
}


def error_from_dict(data: dict[str, Any]) -> ResourceRouterError:
    """Rebuild an error from its ``to_dict()`` form (wire replies, gateway bodies).

    Unknown types come back as a plain ``ResourceRouterError`` that keeps the sender's message; details
    that do not fit the class are ignored rather than trusted.
    """
    cls = _BY_NAME.get(str(data.get("type", "")), ResourceRouterError)
    message = str(data.get("message", ""))
    if cls is ResourceRouterError:
        return ResourceRouterError(message)
    kwargs = {name: data.get(name) for name in cls.detail_fields}
    try:
        return cls(message, **kwargs)
    except (TypeError, ValueError):
        return ResourceRouterError(message)
