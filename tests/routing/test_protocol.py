"""The wire format: envelopes, limits, errors, version rules (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resource_router import InvalidRequestError, MethodNotFoundError, RemoteHandlerError, ResourceRouterError
from resource_router.errors import error_from_dict
from resource_router.routing.protocol import (
    PROTOCOL_VERSION,
    STATUS_ERROR,
    STATUS_NOT_OWNER,
    STATUS_OK,
    ProtocolError,
    decode_reply,
    decode_request,
    encode_error_reply,
    encode_not_owner_reply,
    encode_ok_reply,
    encode_request,
    handler_error,
)

LIMIT = 1 << 20


def request(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "request_id": "c1:1",
        "reply_channel": "rr:reply:c1",
        "service_name": "svc",
        "method": "get",
        "resource_id": "user-1",
        "params": {"a": [1, 2.5, None, True, b"\x00"]},
        "deadline": 1_900_000_000.25,
        "trace_id": "t1",
        "max_bytes": LIMIT,
    }
    fields.update(overrides)
    return encode_request(**fields)


def test_request_round_trip_uses_the_documented_keys() -> None:
    data = request(fencing_token=17)
    raw = msgpack.unpackb(data, raw=False)
    assert raw == {
        "v": 1,
        "k": "req",
        "id": "c1:1",
        "rc": "rr:reply:c1",
        "svc": "svc",
        "m": "get",
        "rid": "user-1",
        "p": {"a": [1, 2.5, None, True, b"\x00"]},
        "dl": 1_900_000_000.25,
        "tr": "t1",
        "ft": 17,
    }
    decoded = decode_request(data, max_bytes=LIMIT)
    assert decoded.request_id == "c1:1"
    assert decoded.reply_channel == "rr:reply:c1"
    assert decoded.service_name == "svc"
    assert decoded.method == "get"
    assert decoded.resource_id == "user-1"
    assert decoded.params == {"a": [1, 2.5, None, True, b"\x00"]}
    assert decoded.deadline == 1_900_000_000.25
    assert decoded.trace_id == "t1"
    assert decoded.fencing_token == 17


def test_service_level_request_has_nil_resource_and_optional_fields() -> None:
    decoded = decode_request(request(resource_id=None, deadline=None, trace_id=None), max_bytes=LIMIT)
    assert decoded.resource_id is None
    assert decoded.deadline is None
    assert decoded.trace_id is None
    assert decoded.fencing_token is None
    assert "ft" not in msgpack.unpackb(request(), raw=False)


def test_unknown_fields_are_ignored() -> None:
    raw = msgpack.unpackb(request(), raw=False)
    raw["future_field"] = {"x": 1}
    assert decode_request(msgpack.packb(raw), max_bytes=LIMIT).method == "get"


def test_encoding_refuses_oversized_and_unencodable_params() -> None:
    with pytest.raises(InvalidRequestError) as big:
        request(params="x" * 2048, max_bytes=1024)
    assert big.value.field == "params"
    assert "1024" in big.value.message
    with pytest.raises(InvalidRequestError) as odd:
        request(params=object())
    assert odd.value.field == "params"
    with pytest.raises(InvalidRequestError):
        request(params=2**70)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (msgpack.packb([1, 2]), "malformed"),
        (msgpack.packb({"k": "rep", "v": 1}), "foreign"),
        (msgpack.packb({"hello": "world"}), "foreign"),
        (msgpack.packb({"k": "req", "v": 2, "id": "i", "rc": "rr:reply:c"}), "version"),
        (msgpack.packb({"k": "req", "v": 1, "id": "i", "rc": "rr:reply:c", "svc": "s"}), "malformed"),
        (msgpack.packb({"k": "req", "v": 1, "id": "i", "rc": "r", "svc": "s", "m": "m", "dl": "x"}), "malformed"),
        (msgpack.packb({"k": "req", "v": 1, "id": "i", "rc": "r", "svc": "s", "m": "m", "ft": True}), "malformed"),
        (msgpack.packb({"k": "req", "v": 1, "id": "", "rc": "r", "svc": "s", "m": "m"}), "malformed"),
        (msgpack.packb({"k": "req", "v": 1, "id": "i" * 300, "rc": "r", "svc": "s", "m": "m"}), "malformed"),
        (b"\xa3\xff\xfe\xfd", "malformed"),  # a str that is not UTF-8
    ],
)
def test_bad_requests_raise_protocol_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(data, max_bytes=LIMIT)
    assert info.value.reason == reason


def test_protocol_errors_keep_what_is_needed_to_answer() -> None:
    data = msgpack.packb({"k": "req", "v": 3, "id": "c:9", "rc": "rr:reply:c", "tr": "t9"})
    with pytest.raises(ProtocolError) as info:
        decode_request(data, max_bytes=LIMIT)
    err = info.value
    assert (err.request_id, err.reply_channel, err.trace_id) == ("c:9", "rr:reply:c", "t9")
    assert err.to_error().code == 400
    assert err.to_error().field == "v"


def test_oversized_request_is_reported_with_its_reply_channel() -> None:
    data = request(params="y" * 5000, max_bytes=LIMIT)
    with pytest.raises(ProtocolError) as info:
        decode_request(data, max_bytes=2048)
    assert info.value.reason == "oversized"
    assert info.value.reply_channel == "rr:reply:c1"
    assert "2048" in info.value.message
    with pytest.raises(ProtocolError) as garbage:
        decode_request(b"\xc1" * 5000, max_bytes=2048)
    assert garbage.value.reason == "oversized"
    assert garbage.value.reply_channel is None


def test_replies_round_trip() -> None:
    ok = decode_reply(
        encode_ok_reply("c:1", {"n": 1}, instance_id="i1", trace_id="t", fencing_token=5, max_bytes=LIMIT)
    )
    assert (ok.request_id, ok.status, ok.result, ok.instance_id, ok.fencing_token, ok.trace_id) == (
        "c:1",
        STATUS_OK,
        {"n": 1},
        "i1",
        5,
        "t",
    )
    refused = decode_reply(encode_not_owner_reply("c:2", instance_id="i1", trace_id=None))
    assert refused.status == STATUS_NOT_OWNER
    assert refused.result is None
    err = decode_reply(
        encode_error_reply("c:3", MethodNotFoundError("no handler", method="m"), instance_id="i1", trace_id="t")
    )
    assert err.status == STATUS_ERROR
    assert err.error == {"type": "MethodNotFoundError", "code": 404, "message": "no handler", "method": "m"}
    rebuilt = error_from_dict(err.error)
    assert isinstance(rebuilt, MethodNotFoundError)
    assert rebuilt.method == "m"


def test_results_that_cannot_be_sent_become_errors() -> None:
    big = decode_reply(
        encode_ok_reply("c:1", "z" * 4096, instance_id="i", trace_id=None, fencing_token=None, max_bytes=1024)
    )
    assert big.status == STATUS_ERROR
    assert big.error is not None
    assert big.error["type"] == "InvalidRequestError"
    assert big.error["field"] == "result"
    odd = decode_reply(
        encode_ok_reply("c:2", {1, 2}, instance_id="i", trace_id=None, fencing_token=None, max_bytes=LIMIT)
    )
    assert odd.status == STATUS_ERROR
    assert odd.error is not None
    assert odd.error["type"] == "RemoteHandlerError"


def test_handler_errors_carry_the_remote_type_and_message() -> None:
    err = handler_error("charge", KeyError("card"))
    assert isinstance(err, RemoteHandlerError)
    assert err.remote_type == "KeyError"
    assert err.remote_message == "'card'"
    assert "charge" in err.message


def test_error_details_that_msgpack_cannot_carry_are_stringified() -> None:
    class Odd(ResourceRouterError):
        detail_fields = ("thing",)

        def __init__(self) -> None:
            super().__init__("odd")
            self.thing = object()

    reply = decode_reply(encode_error_reply("c:1", Odd(), instance_id="i", trace_id=None))
    assert reply.error is not None
    assert reply.error["type"] == "Odd"
    assert reply.error["thing"].startswith("<object")


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        msgpack.packb({"k": "req", "v": 1}),
        msgpack.packb({"k": "rep", "v": 2, "id": "x", "s": "ok"}),
        msgpack.packb({"k": "rep", "v": 1, "id": "x", "s": "maybe"}),
        msgpack.packb({"k": "rep", "v": 1, "id": "x", "s": "error"}),
    ],
)
def test_bad_replies_raise_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(data)


def test_version_constant() -> None:
    assert PROTOCOL_VERSION == 1


_PARAMS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, database=None)
@given(params=_PARAMS, rid=st.none() | st.text(min_size=1, max_size=30), method=st.text(min_size=1, max_size=20))
def test_any_msgpack_params_survive_the_round_trip(params: Any, rid: str | None, method: str) -> None:
    decoded = decode_request(request(params=params, resource_id=rid, method=method), max_bytes=LIMIT)
    assert decoded.resource_id == rid
    assert decoded.method == method
    assert decoded.params == params


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=512))
def test_random_bytes_only_ever_raise_protocol_errors(data: bytes) -> None:
    reasons = []
    for decode in (lambda: decode_request(data, max_bytes=256), lambda: decode_reply(data)):
        try:
            decode()
        except ProtocolError as exc:
            reasons.append(exc.reason)
    assert set(reasons) <= {"malformed", "foreign", "version", "oversized"}


def test_pydantic_models_travel_as_their_json_dump() -> None:
    from datetime import UTC, datetime

    from resource_router import Resource

    res = Resource(
        resource_id="r",
        owner_instance_id="i",
        service_name="s",
        registered_at=datetime(2026, 1, 2, tzinfo=UTC),
        fencing_token=3,
    )
    reply = decode_reply(
        encode_ok_reply("c:1", res, instance_id="i", trace_id=None, fencing_token=None, max_bytes=LIMIT)
    )
    assert reply.status == STATUS_OK
    assert reply.result == res.model_dump(mode="json")
    assert decode_request(request(params=[res]), max_bytes=LIMIT).params == [res.model_dump(mode="json")]


def test_optional_send_time_and_activation_flag() -> None:
    plain = decode_request(request(), max_bytes=LIMIT)
    assert (plain.sent_at, plain.activate) == (None, False)
    data = request(sent_at=1_900_000_000.5, activate=True)
    raw = msgpack.unpackb(data, raw=False)
    assert (raw["ts"], raw["act"]) == (1_900_000_000_500, True)  # milliseconds, as a seal's ts
    decoded = decode_request(data, max_bytes=LIMIT)
    assert (decoded.sent_at, decoded.activate) == (1_900_000_000.5, True)
    for field, bad in (("ts", "now"), ("ts", True), ("act", 1), ("act", "yes")):
        message = msgpack.unpackb(request(), raw=False) | {field: bad}
        with pytest.raises(ProtocolError) as info:
            decode_request(msgpack.packb(message), max_bytes=LIMIT)
        assert info.value.reason == "malformed"
        assert field in info.value.message


def test_not_owner_reply_may_name_where_the_resource_went() -> None:
    bare = decode_reply(encode_not_owner_reply("c1:1", instance_id="i1", trace_id=None))
    assert (bare.status, bare.redirect, bare.reason) == (STATUS_NOT_OWNER, None, None)
    assert "to" not in msgpack.unpackb(encode_not_owner_reply("c1:1", instance_id="i1", trace_id=None))
    data = encode_not_owner_reply("c1:2", instance_id="i1", trace_id="t", redirect="i2", reason="moved")
    assert msgpack.unpackb(data, raw=False)["to"] == "i2"
    reply = decode_reply(data)
    assert (reply.redirect, reply.reason) == ("i2", "moved")
    odd = msgpack.unpackb(data, raw=False) | {"to": 7, "why": None}
    assert decode_reply(msgpack.packb(odd)).redirect is None
