"""The two wires (redis-py's public connection API, and the fast path that reads the socket itself),
on the real Redis; ``make test`` runs this file on the oldest and on the newest supported redis-py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ResponseError

from resource_router import ServiceClient, ServiceInstance
from resource_router.transport._fastwire import FastWire
from resource_router.transport.connection import CLIENT_OPTIONS, connect
from resource_router.transport.link import make_wire
from resource_router.transport.tasks import stop_task
from resource_router.transport.wire import ConnectionWire, Wire

WIRES: dict[str, Callable[[AbstractConnection], Wire]] = {"public": ConnectionWire, "fast": FastWire}


def _connection(redis_url: str) -> Connection:
    client = connect(redis_url)
    kwargs = {**client.connection_pool.connection_kwargs, **CLIENT_OPTIONS}  # type: ignore[union-attr]
    return Connection(**{k: v for k, v in kwargs.items() if k != "connection_class"})


@pytest.fixture(params=sorted(WIRES))
async def wire(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Wire]:
    w = WIRES[request.param](_connection(redis_url))
    await w.open()
    try:
        yield w
    finally:
        await w.close()


class Replies:
    """One read loop for the wire's whole life (cancelling a read ends a redis-py connection)."""

    def __init__(self, wire: Wire) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(wire.read_into(self.queue.put_nowait))

    async def take(self, count: int) -> list[Any]:
        return [await asyncio.wait_for(self.queue.get(), 5.0) for _ in range(count)]


@pytest.fixture
async def replies(wire: Wire) -> AsyncIterator[Replies]:
    r = Replies(wire)
    try:
        yield r
    finally:
        await stop_task(r.task)


async def test_commands_written_together_are_answered_in_order(wire: Wire, replies: Replies, namespace: str) -> None:
    key = f"{namespace}:k"
    wire.write(
        wire.pack("SET", key, b"\x00\xff binary")
        + wire.pack("GET", key)
        + wire.pack("INCR", key)  # not an integer: an error reply, handed over as a value
        + wire.pack("DEL", key)
    )
    got = await replies.take(4)
    assert got[:2] == [b"OK", b"\x00\xff binary"]
    assert isinstance(got[2], ResponseError)
    assert got[3] == 1


async def test_subscriptions_and_messages_arrive_on_the_read_loop(
    wire: Wire, replies: Replies, redis_url: str, namespace: str
) -> None:
    channel = f"{namespace}:ch".encode()
    wire.write(wire.pack("SUBSCRIBE", channel))
    assert await replies.take(1) == [[b"subscribe", channel, 1]]
    publisher = connect(redis_url)
    try:
        assert await publisher.publish(channel, b"one") == 1
        assert await publisher.publish(channel, b"two") == 1
        assert await replies.take(2) == [[b"message", channel, b"one"], [b"message", channel, b"two"]]
    finally:
        await publisher.aclose()


async def test_a_closed_connection_ends_the_read_loop_with_a_connection_error(wire: Wire) -> None:
    reader = asyncio.create_task(wire.read_into(lambda reply: None))
    await asyncio.sleep(0.05)
    await wire.close()
    with pytest.raises(redis.exceptions.ConnectionError):
        await asyncio.wait_for(reader, 5.0)


def test_the_fast_wire_is_chosen_only_for_redis_pys_own_connections(redis_url: str) -> None:
    assert isinstance(make_wire(_connection(redis_url)), FastWire)
    memory = connect("memory://wire-choice")
    fake = memory.connection_pool.make_connection()  # type: ignore[union-attr]
    assert isinstance(make_wire(fake), ConnectionWire)


async def test_routing_works_over_the_public_wire_alone(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the fast path switched off, every connection of the hub uses redis-py's public API."""
    monkeypatch.setattr(FastWire, "supports", staticmethod(lambda conn: False))
    async with (
        ServiceInstance(redis_url, "wired", "w1", namespace=namespace, ttl=5) as inst,
        ServiceClient(redis_url, namespace=namespace) as client,
    ):
        inst.add_handler("echo", lambda request: request.params)
        await inst.register_resource([f"r{i}" for i in range(20)])
        results = await asyncio.gather(*(client.call("wired", "echo", i, resource_id=f"r{i % 20}") for i in range(200)))
        assert results == list(range(200))


async def test_stop_task_stops_a_loop_that_swallows_a_cancellation() -> None:
    stopping = False
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while not stopping:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1  # what a library turning a cancellation into another error amounts to

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    stop = asyncio.create_task(stop_task(task, grace=0.01))
    await asyncio.sleep(0.03)
    stopping = True
    await asyncio.wait_for(stop, 2.0)
    assert task.done()
    assert swallowed >= 2  # cancelled again after the first cancellation was swallowed
