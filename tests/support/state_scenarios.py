"""What every state store must do, as scenarios the store tests run on each backend.

Each scenario takes ``make(instance_id, **options)``: an async context manager yielding a started
``ServiceInstance`` of the service ``SERVICE`` with the store under test (Redis: on every Redis
backend; PostgreSQL: on a real Redis, the state in PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from pydantic import BaseModel

from resource_router import (
    InvalidRequestError,
    RouteRequest,
    ServiceClient,
    ServiceInstance,
    StaleOwnerError,
    StateTooLargeError,
    StateVersionConflictError,
)
from tests.support.waiting import wait_for

SERVICE = "carts"

Make = Callable[..., AbstractAsyncContextManager[ServiceInstance]]


class Cart(BaseModel):
    items: list[str] = []
    total: int = 0


async def round_trip(make: Make) -> None:
    async with make("i-1") as inst:
        await inst.register_resource("cart-1")
        state = inst.state("cart-1")
        assert await state.load() is None and state.version == 0
        assert await state.save({"items": ["apple"], "n": 1, "blob": b"\x00\xff"}) == 1
        assert await state.save({"items": ["apple", "pear"], "n": 2, "blob": b"\x00\xff"}) == 2
        again = inst.state("cart-1")
        assert await again.load() == {"items": ["apple", "pear"], "n": 2, "blob": b"\x00\xff"}
        assert again.version == 2
        assert await again.delete() is True
        assert await again.load() is None and again.version == 0
        assert await again.delete() is False
        assert await again.save([1, 2, 3]) == 1  # the versions start over after a delete


async def compare_and_set(make: Make) -> None:
    async with make("i-1") as inst:
        await inst.register_resource("cart-1")
        state = inst.state("cart-1")
        assert await state.save("a", version=0) == 1
        with pytest.raises(StateVersionConflictError) as caught:
            await state.save("b", version=0)
        assert (caught.value.code, caught.value.error_code) == (409, "version_conflict")
        assert (caught.value.expected, caught.value.actual) == (0, 1)
        assert await state.save("c", version=1) == 2
        with pytest.raises(StateVersionConflictError):
            await state.save("d", version=7)
        with pytest.raises(StateVersionConflictError):
            await state.delete(version=1)
        assert await state.load() == "c" and state.version == 2  # nothing written by the refusals
        assert await state.delete(version=2) is True
        with pytest.raises(InvalidRequestError) as bad:
            await state.save("e", version=-1)
        assert bad.value.field == "version"


async def handlers_count(make: Make, client: ServiceClient) -> None:
    async with make("i-1") as inst:

        @inst.handler("add")
        async def add(request: RouteRequest) -> int:
            total = (await request.state.load() or 0) + int(request.params)
            await request.state.save(total, version=request.state.version)
            return total

        await inst.register_resource("cart-1")
        results = [await client.call(SERVICE, "add", i, resource_id="cart-1") for i in range(1, 11)]
        assert results[-1] == 55
        assert await inst.state("cart-1").load() == 55


async def bad_input_stores_nothing(make: Make) -> None:
    async with make("i-1", state_model=Cart) as inst:
        await inst.register_resource("cart-1")
        state = inst.state("cart-1")
        assert await state.save(Cart(items=["x"], total=1)) == 1
        assert await state.save({"items": ["x", "y"], "total": 2}) == 2  # a dict is validated
        loaded = await state.load()
        assert isinstance(loaded, Cart) and loaded.total == 2
        with pytest.raises(InvalidRequestError) as caught:
            await state.save({"items": "not a list", "total": "many"})
        assert (caught.value.code, caught.value.field) == (400, "state")
        assert await inst.state("cart-1").load() == loaded
    async with make("i-2") as inst:
        await inst.register_resource("cart-2")
        state = inst.state("cart-2")
        with pytest.raises(InvalidRequestError) as caught:
            await state.save({"when": object()})
        assert (caught.value.code, caught.value.field) == (400, "state")
        limit = inst.registry.settings.max_state_bytes
        with pytest.raises(StateTooLargeError) as big:
            await state.save("x" * (limit + 1))
        assert (big.value.code, big.value.field, big.value.limit) == (413, "state", limit)
        assert big.value.size > limit
        assert await state.load() is None  # nothing stored
        assert await state.save("x" * (limit - 16)) == 1  # just under the limit fits


async def not_owner_refused(make: Make) -> None:
    async with make("i-1") as one, make("i-2") as two:
        with pytest.raises(StaleOwnerError) as caught:
            one.state("cart-9")  # never owned here
        assert caught.value.code == 409 and caught.value.error_code == "stale_owner"
        await one.register_resource("cart-1")
        old = one.state("cart-1")
        assert await old.save({"by": "one"}) == 1
        taken = await two.register_resource("cart-1", force=True)
        new_token = taken.fencing_tokens["cart-1"]
        assert new_token > old.fencing_token
        fresh = two.state("cart-1")
        assert await fresh.load() == {"by": "one"}  # the state stayed through the takeover
        assert await fresh.save({"by": "two"}) == 2
        with pytest.raises(StaleOwnerError) as stale:
            await old.save({"by": "one, late"})  # a handle from before the takeover
        assert stale.value.fencing_token == old.fencing_token
        assert stale.value.current_token == new_token
        with pytest.raises(StaleOwnerError):
            await old.delete()
        assert await two.state("cart-1").load() == {"by": "two"}  # nothing written by the refusals
        await wait_for(lambda: "cart-1" not in one.owned_resources, timeout=5.0)


async def survives_a_move(make: Make) -> None:
    async with make("i-1") as one, make("i-2") as two:
        await one.register_resource("cart-1")
        await one.state("cart-1").save({"n": 41})
        await one.release_resource("cart-1")
        await two.register_resource("cart-1")
        state = two.state("cart-1")
        assert await state.load() == {"n": 41}
        assert await state.save({"n": 42}, version=state.version) == 2
