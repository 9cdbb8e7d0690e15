"""Every Redis key and channel name, and the rules for the ids that go into them.

Nothing else in the package formats a key string. Layout for namespace ``rr``, service ``S``,
instance ``I`` and resource ``R`` (README, "Keys", has the same table with example commands):

==============================  ======  ==========================  ==========================================
key                             type    TTL                         holds
==============================  ======  ==========================  ==========================================
``rr:{S}:owner:R``              string  the owner's lease           owner instance id, plain text
``rr:{S}:instance:I``           hash    the instance's lease        ttl_ms, registered_at_ms, heartbeat_at_ms,
                                                                    metadata (JSON)
``rr:{S}:owned:I``              hash    none (swept)                resource id -> grant record
                                                                    ``fencing_token|registered_ms|meta``
``rr:{S}:lost:I``               set     none (drained by heartbeat) ids taken from the instance by force
``rr:{S}:instances``            zset    none                        instance id -> lease expiry (ms, Redis time)
``rr:{S}:fence``                string  none                        last fencing token issued in the service
``rr:{S}:audit``                stream  MAXLEN ~ (bounded)          ownership events, one JSON field ``event``
``rr:services``                 set     none                        service names that registered an instance
==============================  ======  ==========================  ==========================================

Pub/sub channels (not keys): ``rr:{S}:events`` (ownership events), ``rr:{S}:rpc:I`` (requests to an
instance), ``rr:reply:C`` (replies to client process ``C``).

Cluster: every key of a service carries the hash tag ``{S}``, so every script runs on one slot.
Scripts receive the keys they are about in ``KEYS`` (instance keys; the owner key of each resource in
a registration, release or lookup). Keys that follow from those are built inside Lua from prefixes
made here: the owner keys of the ids in an owned hash (heartbeat, deregister, sweep), the owner's
owned hash in a lookup, and the previous owner's hash and set in a forced takeover. Their names
depend on what the script reads, or passing them would double the arguments of a 1000-id
registration; they carry the same hash tag, so they stay on the script's slot.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import InvalidRequestError

__all__ = [
    "INSTANCE_ID_SCHEMA",
    "MAX_INSTANCE_ID_LENGTH",
    "MAX_RESOURCE_ID_LENGTH",
    "MAX_SERVICE_NAME_LENGTH",
    "RESOURCE_ID_SCHEMA",
    "SERVICE_NAME_SCHEMA",
    "KeySpace",
    "ServiceKeys",
    "validate_instance_id",
    "validate_namespace",
    "validate_resource_id",
    "validate_resource_ids",
    "validate_service_name",
    "validate_text",
]

MAX_SERVICE_NAME_LENGTH = 128
MAX_INSTANCE_ID_LENGTH = 128
MAX_RESOURCE_ID_LENGTH = 256
MAX_NAMESPACE_LENGTH = 64

# Names that appear inside the hash tag or as a path segment: a conservative, shell-safe alphabet.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Instance ids often look like host:pid or pod names; '|' (the separator of stored records) stays out.
_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
# Characters refused in resource ids besides control/format/separator code points:
# braces would change the hash tag, '*?[]' are glob characters that make SCAN/KEYS patterns ambiguous.
_RESOURCE_FORBIDDEN = frozenset('{}*?[]\\"')
_PLAIN_FORBIDDEN_RE = re.compile(r'[ {}*?\[\]\\"]')

# The same rules as JSON-schema keywords, for API schemas (OpenAPI) that tell clients what an id may be.
# They describe; the validate_* functions below decide (and name the offending character).
SERVICE_NAME_SCHEMA: dict[str, Any] = {
    "pattern": f"^{_NAME_RE.pattern}$",
    "maxLength": MAX_SERVICE_NAME_LENGTH,
    "description": "letters, digits, '.', '_' and '-'; the first a letter or digit",
}
INSTANCE_ID_SCHEMA: dict[str, Any] = {
    "pattern": f"^{_INSTANCE_RE.pattern}$",
    "maxLength": MAX_INSTANCE_ID_LENGTH,
    "description": "letters, digits, '.', '_', ':', '@' and '-'; the first a letter or digit",
}
RESOURCE_ID_SCHEMA: dict[str, Any] = {
    # ASCII part of the rule; other Unicode whitespace, control and format characters are refused too.
    "pattern": r'^[^\s{}*?\[\]\\"\u0000-\u001f\u007f]+$',
    "maxLength": MAX_RESOURCE_ID_LENGTH,
    "description": "any printable Unicode text except whitespace, control and format characters, "
    "braces, glob characters (*?[]), double quotes and backslashes",
}


def _check_type_and_length(value: object, field: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string, got {type(value).__name__}", field=field)
    if not value:
        raise InvalidRequestError(f"{field} must not be empty", field=field)
    if len(value) > max_length:
        raise InvalidRequestError(f"{field} is {len(value)} characters long; the limit is {max_length}", field=field)
    return value


def validate_namespace(value: object) -> str:
    value = _check_type_and_length(value, "namespace", MAX_NAMESPACE_LENGTH)
    if not _NAME_RE.fullmatch(value):
        raise InvalidRequestError(
            f"namespace {value!r} may only use letters, digits, '.', '_' and '-' (first: letter or digit)",
            field="namespace",
        )
    return value


def validate_service_name(value: object) -> str:
    value = _check_type_and_length(value, "service_name", MAX_SERVICE_NAME_LENGTH)
    if not _NAME_RE.fullmatch(value):
        raise InvalidRequestError(
            f"service_name {value!r} may only use letters, digits, '.', '_' and '-' (first: letter or digit)",
            field="service_name",
        )
    return value


def validate_instance_id(value: object) -> str:
    value = _check_type_and_length(value, "instance_id", MAX_INSTANCE_ID_LENGTH)
    if not _INSTANCE_RE.fullmatch(value):
        raise InvalidRequestError(
            f"instance_id {value!r} may only use letters, digits, '.', '_', ':', '@' and '-' (first: letter or digit)",
            field="instance_id",
        )
    return value


def validate_resource_id(value: object, field: str = "resource_id") -> str:
    """Resource ids are opaque Unicode text: any printable character except whitespace, braces,
    glob characters, quote and backslash. They are stored and returned exactly as given."""
    value = _check_type_and_length(value, field, MAX_RESOURCE_ID_LENGTH)
    if value.isascii() and value.isprintable():
        found = _PLAIN_FORBIDDEN_RE.search(value)
        bad = found.group() if found else None
    else:
        bad = next(
            (ch for ch in value if ch in _RESOURCE_FORBIDDEN or unicodedata.category(ch)[0] in ("C", "Z")),
            None,
        )
    if bad is not None:
        raise InvalidRequestError(
            f"{field} {value!r} contains {bad!r} (U+{ord(bad):04X}); whitespace, control characters, "
            "braces, glob characters, quotes and backslashes are not allowed",
            field=field,
        )
    return value


def validate_text(value: str, field: str) -> str:
    """``value`` when it can be stored as UTF-8 text; ``InvalidRequestError`` naming ``field`` when it
    holds a lone surrogate (``"\\ud800"`` decoded from JSON), which no Redis value or wire message can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise InvalidRequestError(
            f"{field} contains U+{ord(bad):04X}, a lone surrogate that is not valid Unicode text; "
            "send characters, not halves of a UTF-16 pair",
            field=field,
        ) from None
    return value


def validate_resource_ids(values: object, *, max_count: int | None = None) -> list[str]:
    """Validate a batch of ids and drop duplicates, keeping first-seen order."""
    if isinstance(values, str):
        values = [values]
    elif isinstance(values, bytes | bytearray | dict) or not isinstance(values, Iterable):
        raise InvalidRequestError(
            f"resource_ids must be a list of strings, got {type(values).__name__}", field="resource_ids"
        )
    else:
        values = list(values)
    if not values:
        raise InvalidRequestError("resource_ids must not be empty", field="resource_ids")
    if not _batch_is_plain(values):
        for v in values:
            validate_resource_id(v, "resource_ids")
    out = list(dict.fromkeys(values))
    if max_count is not None and len(out) > max_count:
        raise InvalidRequestError(
            f"{len(out)} resource ids in one call; the limit is {max_count}", field="resource_ids"
        )
    return out


def _batch_is_plain(values: Sequence[object]) -> bool:
    """Fast path for the usual batch: short printable ASCII strings without forbidden characters.
    False means "check each id" (which then names the offending one), not "invalid"."""
    if not all(type(v) is str and 0 < len(v) <= MAX_RESOURCE_ID_LENGTH for v in values):
        return False
    joined = "".join(values)  # type: ignore[arg-type]
    return joined.isascii() and joined.isprintable() and _PLAIN_FORBIDDEN_RE.search(joined) is None


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key and channel builder for one namespace."""

    namespace: str = "rr"

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    def service(self, service_name: str) -> ServiceKeys:
        return ServiceKeys(self.namespace, validate_service_name(service_name))

    @property
    def services(self) -> str:
        return f"{self.namespace}:services"

    def reply_channel(self, client_id: str) -> str:
        return f"{self.namespace}:reply:{client_id}"

    @property
    def reply_prefix(self) -> str:
        """The start of every reply channel of the namespace (instances answer nowhere else)."""
        return f"{self.namespace}:reply:"


@dataclass(frozen=True)
class ServiceKeys:
    """Keys and channels of one service. All keys share the hash tag ``{service_name}``."""

    namespace: str
    service_name: str

    @cached_property
    def prefix(self) -> str:
        return f"{self.namespace}:{{{self.service_name}}}:"

    # -- per resource -------------------------------------------------------------------------
    @cached_property
    def owner_prefix(self) -> str:
        return self.prefix + "owner:"

    def owner(self, resource_id: str) -> str:
        return self.owner_prefix + resource_id

    def owner_keys(self, resource_ids: list[str]) -> list[str]:
        p = self.owner_prefix
        return [p + r for r in resource_ids]

    # -- per instance -------------------------------------------------------------------------
    @cached_property
    def instance_prefix(self) -> str:
        return self.prefix + "instance:"

    @cached_property
    def owned_prefix(self) -> str:
        return self.prefix + "owned:"

    @cached_property
    def lost_prefix(self) -> str:
        return self.prefix + "lost:"

    def instance(self, instance_id: str) -> str:
        return self.instance_prefix + instance_id

    def owned(self, instance_id: str) -> str:
        return self.owned_prefix + instance_id

    def lost(self, instance_id: str) -> str:
        return self.lost_prefix + instance_id

    def rpc_channel(self, instance_id: str) -> str:
        return f"{self.prefix}rpc:{instance_id}"

    # -- per service --------------------------------------------------------------------------
    @cached_property
    def instances(self) -> str:
        return self.prefix + "instances"

    @cached_property
    def fence(self) -> str:
        return self.prefix + "fence"

    @cached_property
    def audit(self) -> str:
        return self.prefix + "audit"

    @cached_property
    def events_channel(self) -> str:
        return self.prefix + "events"

    def owner_pattern(self) -> str:
        """A SCAN MATCH pattern for every owner key of the service (ids cannot contain glob chars)."""
        return self.owner_prefix + "*"
