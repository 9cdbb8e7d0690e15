"""State values to bytes and back (no store): msgpack, a pydantic model, the size limit; and what
``request.state`` is outside a request for a resource."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from resource_router import InvalidRequestError, RouteRequest, StateTooLargeError
from resource_router.state import StateCodec


class Room(BaseModel):
    players: list[str]
    round: int = 0


def test_any_msgpack_value_round_trips() -> None:
    codec = StateCodec()
    for value in (None, 0, -1, 2**63 - 1, 1.5, "text", b"\x00\xff", [1, [2, 3]], {"a": {"b": [True, None]}}, {1: "x"}):
        assert codec.decode(codec.encode(value)) == value


def test_a_model_validates_and_loads() -> None:
    codec = StateCodec(Room)
    data = codec.encode({"players": ["ann"], "round": 2})
    assert codec.decode(data) == Room(players=["ann"], round=2)
    assert codec.decode(codec.encode(Room(players=[]))) == Room(players=[])
    with pytest.raises(InvalidRequestError) as caught:
        codec.encode({"players": "ann"})
    assert (caught.value.code, caught.value.field) == (400, "state")
    assert "Room" in caught.value.message
    with pytest.raises(InvalidRequestError):
        StateCodec(dict)  # type: ignore[arg-type]


def test_values_msgpack_cannot_encode_are_400_naming_state() -> None:
    codec = StateCodec()
    for value in (object(), {"s": {1, 2}}, 2**70):
        with pytest.raises(InvalidRequestError) as caught:
            codec.encode(value)
        assert (caught.value.code, caught.value.field) == (400, "state")


def test_the_limit_counts_encoded_bytes() -> None:
    codec = StateCodec(max_bytes=100)
    assert len(codec.encode("x" * 98)) == 100  # at the limit: accepted
    with pytest.raises(StateTooLargeError) as caught:
        codec.encode("x" * 99)
    assert (caught.value.code, caught.value.size, caught.value.limit, caught.value.field) == (413, 101, 100, "state")
    assert isinstance(caught.value, InvalidRequestError)
    assert caught.value.to_dict()["size"] == 101


def test_stored_bytes_that_are_not_msgpack_are_reported() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        StateCodec().decode(b"\xc1")
    assert caught.value.field == "state"


def test_request_state_exists_only_for_a_resource_request() -> None:
    request = RouteRequest(service_name="s", method="m")
    with pytest.raises(RuntimeError, match=r"request\.state"):
        _ = request.state
    assert "state" not in request.model_dump()
