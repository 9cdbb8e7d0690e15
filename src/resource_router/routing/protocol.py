"""The wire format of routed calls: msgpack maps with a version field ``v`` (``docs/protocol.md``).

A request goes to the owner's channel ``{ns}:rpc:{S}:{instance_id}``; the reply goes to the caller's
channel ``{ns}:reply:{client_id}`` named in the request. Both are msgpack maps with short string keys:

request  ``{"v": 1, "k": "req", "id", "rc", "svc", "m", "rid", "p", "dl", "tr", "ft", "ts", "act", "tp"}``
reply    ``{"v": 1, "k": "rep", "id", "s", "r" | "e", "iid", "ft", "tr", "to", "why"}``

``s`` (status) is ``"ok"`` (``r`` holds the result), ``"error"`` (``e`` holds an error map, the
``to_dict()`` form of a library exception) or ``"not_owner"`` (the instance did not run the request:
it does not own the resource, or its lease may have run out; the caller re-resolves the owner, or
follows ``to`` when the refusal names where the resource is; ``why`` says why when it matters).

Optional fields (protocol v1 receivers ignore them): ``ts`` is the caller's send time (UNIX
milliseconds; a sealed envelope carries the seal's, which is the same thing: unsigned callers add
their own); instances confirm ownership in Redis for requests that waited too long. ``act`` asks a
placement volunteer to activate (claim) the resource if nobody owns it. ``tp`` is the W3C
``traceparent`` of the caller's OpenTelemetry span (``otel.py``).

With signing keys, both end with two more entries, ``"ts"`` and ``"sg"`` (a timestamp and an
HMAC over the envelope and its channel), appended and checked by ``signing.Signer`` around these
functions; the decoders here ignore ``sg`` like any unknown key and read ``ts`` as the send time.

Version rule: ``v`` changes only for incompatible changes. Receivers ignore keys they do not know, so
optional fields can be added within a version. A request with another ``v`` is answered with an
``InvalidRequestError`` when its id and reply channel can be read, else dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack
from pydantic import BaseModel

from resource_router.errors import InvalidRequestError, ProtocolError, RemoteHandlerError, ResourceRouterError
from resource_router.status import ReplyStatus

__all__ = [
    "KIND_REPLY",
    "KIND_REQUEST",
    "MAX_REQUEST_ID_LENGTH",
    "PROTOCOL_VERSION",
    "STATUS_ERROR",
    "STATUS_NOT_OWNER",
    "STATUS_OK",
    "Reply",
    "Request",
    "decode_reply",
    "decode_request",
    "encode_error_reply",
    "encode_not_owner_reply",
    "encode_ok_reply",
    "encode_request",
    "handler_error",
]

PROTOCOL_VERSION: Final = 1
KIND_REQUEST: Final = "req"
KIND_REPLY: Final = "rep"
STATUS_OK: Final = ReplyStatus.OK
STATUS_ERROR: Final = ReplyStatus.ERROR
STATUS_NOT_OWNER: Final = ReplyStatus.NOT_OWNER
MAX_REQUEST_ID_LENGTH: Final = 256
_packb = msgpack.packb
_unpackb = msgpack.unpackb


@dataclass(slots=True)
class Request:
    request_id: str
    reply_channel: str
    service_name: str
    method: str
    resource_id: str | None
    params: Any
    deadline: float | None
    trace_id: str | None
    fencing_token: int | None
    sent_at: float | None = None
    activate: bool = False
    traceparent: str | None = None


@dataclass(slots=True)
class Reply:
    request_id: str
    status: str
    result: Any
    error: dict[str, Any] | None
    instance_id: str | None
    fencing_token: int | None
    trace_id: str | None
    redirect: str | None = None
    reason: str | None = None


def _default(value: Any) -> Any:
    """Types msgpack does not know: pydantic models travel as their JSON-mode dump."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__} as msgpack")


def _pack(message: dict[str, Any]) -> bytes:
    data: bytes = _packb(message, use_bin_type=True, default=_default)
    return data


def _unpack(data: bytes) -> Any:
    return _unpackb(data, raw=False, strict_map_key=False)


# -- requests --------------------------------------------------------------------------------------
def encode_request(
    *,
    request_id: str,
    reply_channel: str,
    service_name: str,
    method: str,
    resource_id: str | None,
    params: Any,
    deadline: float | None,
    trace_id: str | None,
    max_bytes: int,
    fencing_token: int | None = None,
    sent_at: float | None = None,
    activate: bool = False,
    traceparent: str | None = None,
) -> bytes:
    """Encode a request; ``InvalidRequestError`` (field ``params``) when it cannot be sent."""
    message: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "k": KIND_REQUEST,
        "id": request_id,
        "rc": reply_channel,
        "svc": service_name,
        "m": method,
        "rid": resource_id,
        "p": params,
        "dl": deadline,
        "tr": trace_id,
    }
    if fencing_token is not None:
        message["ft"] = fencing_token
    if sent_at is not None:
        message["ts"] = int(sent_at * 1000)  # milliseconds, as the seal's ``ts`` (signing.py)
    if activate:
        message["act"] = True
    if traceparent is not None:
        message["tp"] = traceparent  # W3C trace context of the caller's span (OpenTelemetry)
    try:
        data = _pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequestError(f"params cannot be encoded as msgpack: {exc}", field="params") from exc
    if len(data) > max_bytes:
        raise InvalidRequestError(
            f"the request is {len(data)} bytes as msgpack; the limit is {max_bytes} (max_payload_bytes)",
            field="params",
        )
    return data


def _str(message: dict[Any, Any], key: str, *, required: bool = True) -> str | None:
    value = message.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {key!r} must be a non-empty string")
    return value


def decode_request(data: bytes, *, max_bytes: int) -> Request:
    """Decode and check a request; raises ``ProtocolError`` (with what could be read)."""
    oversized = len(data) > max_bytes
    try:
        message = _unpack(data)
    except Exception as exc:  # msgpack raises many types for garbage (ValueError, ExtraData, ...)
        reason = "oversized" if oversized else "malformed"
        raise ProtocolError(reason, f"undecodable message ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError("oversized" if oversized else "malformed", "a request must be a msgpack map")
    rid_raw, rc_raw, tr_raw = message.get("id"), message.get("rc"), message.get("tr")
    request_id = rid_raw if isinstance(rid_raw, str) and 0 < len(rid_raw) <= MAX_REQUEST_ID_LENGTH else None
    reply_channel = rc_raw if isinstance(rc_raw, str) and rc_raw else None
    trace_id = tr_raw if isinstance(tr_raw, str) and tr_raw else None
    where = {"request_id": request_id, "reply_channel": reply_channel, "trace_id": trace_id}
    if message.get("k") != KIND_REQUEST:
        raise ProtocolError("foreign", f"not a request (k={message.get('k')!r})")
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "version", f"unsupported protocol version {version!r}; this instance speaks {PROTOCOL_VERSION}", **where
        )
    if oversized:
        raise ProtocolError(
            "oversized",
            f"the request is {len(data)} bytes; the limit is {max_bytes} (max_payload_bytes)",
            **where,
        )
    try:
        if request_id is None:
            raise ValueError(f"field 'id' must be a string of 1..{MAX_REQUEST_ID_LENGTH} characters")
        if reply_channel is None:
            raise ValueError("field 'rc' must be a non-empty string")
        service_name = _str(message, "svc")
        method = _str(message, "m")
        resource_id = _str(message, "rid", required=False)
        deadline = message.get("dl")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
            raise ValueError("field 'dl' must be a number (UNIX time in seconds) or nil")
        token = message.get("ft")
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
            raise ValueError("field 'ft' must be an integer or nil")
        tr = message.get("tr")
        if tr is not None and not isinstance(tr, str):
            raise ValueError("field 'tr' must be a string or nil")
        sent_at = message.get("ts")
        if sent_at is not None and (isinstance(sent_at, bool) or not isinstance(sent_at, int | float)):
            raise ValueError("field 'ts' must be a number (UNIX time in milliseconds) or nil")
        activate = message.get("act")
        if activate is not None and not isinstance(activate, bool):
            raise ValueError("field 'act' must be a boolean or nil")
        traceparent = message.get("tp")
        if traceparent is not None and (not isinstance(traceparent, str) or len(traceparent) > 128):
            raise ValueError("field 'tp' must be a W3C traceparent string or nil")
    except ValueError as exc:
        raise ProtocolError("malformed", f"invalid request: {exc}", **where) from None
    assert service_name is not None
    assert method is not None
    return Request(
        request_id=request_id,
        reply_channel=reply_channel,
        service_name=service_name,
        method=method,
        resource_id=resource_id,
        params=message.get("p"),
        deadline=None if deadline is None else float(deadline),
        trace_id=trace_id,
        fencing_token=token,
        sent_at=None if sent_at is None else sent_at / 1000.0,
        activate=bool(activate),
        traceparent=traceparent,
    )


# -- replies ---------------------------------------------------------------------------------------
def _reply(
    request_id: str, status: str, instance_id: str, trace_id: str | None, fencing_token: int | None
) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "k": KIND_REPLY,
        "id": request_id,
        "s": status,
        "iid": instance_id,
        "ft": fencing_token,
        "tr": trace_id,
    }


def handler_error(method: str, exc: BaseException) -> RemoteHandlerError:
    """The error a caller sees when a handler raised ``exc``."""
    return RemoteHandlerError(
        f"handler {method!r} raised {type(exc).__name__}: {exc}",
        remote_type=type(exc).__name__,
        remote_message=str(exc),
    )


def encode_error_reply(
    request_id: str,
    error: ResourceRouterError,
    *,
    instance_id: str,
    trace_id: str | None,
    fencing_token: int | None = None,
) -> bytes:
    message = _reply(request_id, STATUS_ERROR, instance_id, trace_id, fencing_token)
    message["e"] = error.to_dict()
    try:
        return _pack(message)
    except (TypeError, ValueError, OverflowError):
        message["e"] = ResourceRouterError.to_dict(error) | {k: repr(v) for k, v in error.details().items()}
        return _pack(message)


def encode_not_owner_reply(
    request_id: str,
    *,
    instance_id: str,
    trace_id: str | None,
    fencing_token: int | None = None,
    redirect: str | None = None,
    reason: str | None = None,
) -> bytes:
    """ "Not owner": the request was not run. ``redirect`` names the instance that has the resource now
    (when known), ``reason`` says why (a ``RefusalReason``)."""
    message = _reply(request_id, STATUS_NOT_OWNER, instance_id, trace_id, fencing_token)
    if redirect is not None:
        message["to"] = redirect
    if reason is not None:
        message["why"] = reason
    return _pack(message)


def encode_ok_reply(
    request_id: str,
    result: Any,
    *,
    instance_id: str,
    trace_id: str | None,
    fencing_token: int | None,
    max_bytes: int,
) -> bytes:
    """Encode a result; an unencodable or oversized result becomes an error reply instead."""
    message = _reply(request_id, STATUS_OK, instance_id, trace_id, fencing_token)
    message["r"] = result
    error: ResourceRouterError
    try:
        data = _pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        error = RemoteHandlerError(
            f"the handler's result cannot be encoded as msgpack: {exc}",
            remote_type=type(exc).__name__,
            remote_message=str(exc),
        )
    else:
        if len(data) <= max_bytes:
            return data
        error = InvalidRequestError(
            f"the reply is {len(data)} bytes as msgpack; the limit is {max_bytes} (max_payload_bytes)",
            field="result",
        )
    return encode_error_reply(
        request_id, error, instance_id=instance_id, trace_id=trace_id, fencing_token=fencing_token
    )


def decode_reply(data: bytes) -> Reply:
    """Decode a reply; raises ``ProtocolError`` for anything else."""
    try:
        message = _unpack(data)
    except Exception as exc:
        raise ProtocolError("malformed", f"undecodable message ({type(exc).__name__})") from None
    if not isinstance(message, dict) or message.get("k") != KIND_REPLY:
        raise ProtocolError("foreign", "not a reply")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("version", f"unsupported protocol version {message.get('v')!r}")
    request_id, status = message.get("id"), message.get("s")
    if not isinstance(request_id, str) or status not in (STATUS_OK, STATUS_ERROR, STATUS_NOT_OWNER):
        raise ProtocolError("malformed", "a reply needs a string 'id' and a known status 's'")
    error = message.get("e")
    if status == STATUS_ERROR and not isinstance(error, dict):
        raise ProtocolError("malformed", "an error reply needs an error map 'e'", request_id=request_id)
    iid, token, trace = message.get("iid"), message.get("ft"), message.get("tr")
    redirect, reason = message.get("to"), message.get("why")
    return Reply(
        request_id=request_id,
        status=status,
        result=message.get("r"),
        error=error if isinstance(error, dict) else None,
        instance_id=iid if isinstance(iid, str) else None,
        fencing_token=token if isinstance(token, int) and not isinstance(token, bool) else None,
        trace_id=trace if isinstance(trace, str) else None,
        redirect=redirect if isinstance(redirect, str) and redirect else None,
        reason=reason if isinstance(reason, str) else None,
    )
