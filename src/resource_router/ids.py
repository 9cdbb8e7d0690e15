"""Identifiers: the rules for the names and ids users give, and the ids the library makes.

* **Given** (validated before any Redis call, so nothing is stored for a refused name): service
  names and namespaces (a shell-safe alphabet, they appear in hash tags), instance ids (also ``:``
  and ``@``, as in ``host:pid``), resource ids (opaque Unicode text without whitespace, control
  characters, braces, glob characters, quotes and backslashes). The same rules as JSON-schema
  keywords (``*_SCHEMA``) describe them in API schemas; the ``validate_*`` functions decide.
* **Made**: default instance ids (``hostname-pid-random``), trace ids (128 random bits) and
  unguessable request ids (``RandomIds``).
"""

from __future__ import annotations

import os
import random
import re
import secrets
import socket
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from resource_router.errors import InvalidRequestError

__all__ = [
    "INSTANCE_ID_SCHEMA",
    "MAX_INSTANCE_ID_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "MAX_RESOURCE_ID_LENGTH",
    "MAX_SERVICE_NAME_LENGTH",
    "RESOURCE_ID_SCHEMA",
    "SERVICE_NAME_SCHEMA",
    "RandomIds",
    "default_instance_id",
    "new_trace_id",
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


# -- ids the library makes ---------------------------------------------------------------------------
_ID_CLEAN = re.compile(r"[^A-Za-z0-9._:@-]+")


def default_instance_id() -> str:
    """``hostname-pid-random``, restricted to the characters instance ids allow."""
    host = _ID_CLEAN.sub("-", socket.gethostname()).strip("-._:@")[:60] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def new_trace_id() -> str:
    """128 random bits as 32 hex characters (the W3C trace-id size). Trace ids must be unique, not
    secret: the process's Mersenne Twister (seeded from the OS) draws them without a system call."""
    return f"{random.getrandbits(128):032x}"


class RandomIds:
    """Unguessable ids (96 bits from the OS's CSPRNG as 24 hex characters), drawn 256 at a time:
    one ``os.urandom`` call per 256 ids instead of one per id."""

    __slots__ = ("_hex", "_pos")
    _BATCH = 256
    _SIZE = 24

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def next(self) -> str:
        pos = self._pos
        if pos >= len(self._hex):
            self._hex = os.urandom(self._BATCH * self._SIZE // 2).hex()
            pos = 0
        self._pos = pos + self._SIZE
        return self._hex[pos : pos + self._SIZE]
