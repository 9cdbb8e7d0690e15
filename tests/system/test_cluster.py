"""Redis Cluster specifics, on real clusters of three masters started from the redis-server binary.

The registry, instance, client and routing suites also run on the session's cluster
(``CLUSTER_SUITES`` in conftest.py); this file covers what only a cluster has: URL forms, sharded
channels spread over shards, a master that dies, a slot that moves, the CLI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry
from redis.asyncio.connection import SSLConnection
from typer.testing import CliRunner

from resource_router import (
    InvalidRequestError,
    ResourceRegistry,
    ResourceRouterError,
    RouteRequest,
    ServiceClient,
    ServiceInstance,
)
from resource_router.cli.main import build_app
from resource_router.ownership.keys import KeySpace
from resource_router.transport.connection import connect, describe
from tests.support.redis_cluster import RedisCluster3, command_value
from tests.support.redis_server import redis_server_binary

pytestmark = pytest.mark.skipif(not redis_server_binary(), reason="a Redis Cluster needs redis-server on PATH")


def echo(inst: ServiceInstance) -> None:
    @inst.handler("echo")
    async def handler(request: RouteRequest) -> dict[str, Any]:
        return {"iid": inst.instance_id, "p": request.params}


@pytest.fixture
async def topology(cluster_url: str) -> AsyncIterator[aredis.RedisCluster]:
    """A plain redis-py cluster client, to ask which master holds a key or channel."""
    client = connect(cluster_url)
    assert isinstance(client, aredis.RedisCluster)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


def port_of(topology: aredis.RedisCluster, key: str) -> int:
    return int(topology.get_node_from_key(key).port)


def pick(candidates: Iterator[str], accept: Any) -> str:
    for name in candidates:
        if accept(name):
            return name
    raise AssertionError("no candidate name matched")


# -- URLs ----------------------------------------------------------------------------------------------
async def test_cluster_urls_make_cluster_clients() -> None:
    client = connect("redis+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2:7001/")
    try:
        assert isinstance(client, aredis.RedisCluster)
        assert describe(client) == "redis+cluster://10.0.0.1:7000,10.0.0.2:7001/"
        kwargs = client.nodes_manager.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["protocol"]) == ("user", "p@ss", 2)
    finally:
        await client.aclose()
    tls = connect("rediss+cluster://10.0.0.1:7000/")
    try:
        assert issubclass(tls.nodes_manager.connection_kwargs["connection_class"], SSLConnection)  # type: ignore[union-attr]
        twin = connect(aredis.RedisCluster(host="10.0.0.1", port=7000, ssl=True))  # a client passed in
        assert issubclass(twin.nodes_manager.connection_kwargs["connection_class"], SSLConnection)  # type: ignore[union-attr]
        await twin.aclose()
    finally:
        await tls.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://10.0.0.1/",
        "redis+cluster://10.0.0.1:notaport/",
        "redis+cluster://:7000/",
        "redis+cluster://h:1/3",
    ],
)
def test_malformed_cluster_urls_are_400(url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        connect(url)
    assert info.value.field == "redis"


async def test_a_single_node_url_on_a_cluster_node_fails_at_once_naming_the_cluster_form(
    cluster_url: str, namespace: str, topology: aredis.RedisCluster
) -> None:
    port = topology.get_nodes()[0].port
    single = f"redis://127.0.0.1:{port}/0"
    for entry in (ServiceClient(single, namespace=namespace), ServiceInstance(single, "svc", namespace=namespace)):
        started = time.monotonic()
        with pytest.raises(InvalidRequestError) as info:
            await entry.__aenter__()
        assert "redis+cluster://" in info.value.message
        assert time.monotonic() - started < 2.0
    # The registry alone: a key of another master's slot gives the same clear error.
    service = pick((f"svc-{i}" for i in range(1000)), lambda s: port_of(topology, "{" + s + "}") != port)
    async with ResourceRegistry(single, namespace=namespace, metrics_registry=CollectorRegistry()) as reg:
        with pytest.raises(InvalidRequestError) as info:
            await reg.register_instance(service, "i1", ttl=5)
    assert "redis+cluster://" in info.value.message


# -- sharded pub/sub -----------------------------------------------------------------------------------
async def test_requests_travel_on_sharded_channels_spread_over_the_shards(
    cluster_url: str, namespace: str, topology: aredis.RedisCluster
) -> None:
    keys = KeySpace(namespace).service("spread")
    by_port: dict[int, str] = {}
    for i in range(200):
        iid = f"inst-{i}"
        by_port.setdefault(port_of(topology, keys.rpc_channel(iid)), iid)
    assert len(by_port) == 3  # one instance whose channel lives on each master
    instances = [ServiceInstance(cluster_url, "spread", iid, namespace=namespace, ttl=5) for iid in by_port.values()]
    async with ServiceClient(cluster_url, namespace=namespace) as client:
        for inst in instances:
            echo(inst)
            await inst.start()
        try:
            for inst in instances:
                await inst.register_resource([f"r-{inst.instance_id}"])
                reply = await client.call("spread", "echo", 1, resource_id=f"r-{inst.instance_id}")
                assert reply["iid"] == inst.instance_id
            for port, iid in by_port.items():
                channel = keys.rpc_channel(iid)
                for node in topology.get_nodes():
                    # Each node asked on a connection of its own: redis-py's cluster client merges the
                    # nodes' PUBSUB replies differently across versions (8.2 fails to parse them).
                    direct = aredis.Redis(host=node.host, port=node.port, protocol=2)
                    try:
                        shard = await direct.execute_command("PUBSUB", "SHARDNUMSUB", channel)
                        classic = await direct.execute_command("PUBSUB", "NUMSUB", channel)
                    finally:
                        await direct.aclose()
                    expected = 1 if node.port == port else 0
                    assert int(dict(zip(shard[::2], shard[1::2], strict=True))[channel.encode()]) == expected
                    assert int(classic[1]) == 0  # never a classic (cluster-wide broadcast) subscription
        finally:
            for inst in instances:
                await inst.stop()


# -- faults --------------------------------------------------------------------------------------------
@pytest.fixture
def own_cluster() -> Iterator[RedisCluster3]:
    """A cluster of the test's own, which it may break."""
    cluster = RedisCluster3().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.chaos
async def test_killing_one_master_fails_its_slots_clearly_and_the_others_keep_working(
    own_cluster: RedisCluster3, namespace: str
) -> None:
    url = own_cluster.url
    topo = connect(url)
    assert isinstance(topo, aredis.RedisCluster)
    await topo.initialize()
    victim = own_cluster.servers[2].port
    keys = KeySpace(namespace)

    def safe(key: str) -> bool:
        return port_of(topo, key) != victim

    good = pick((f"good-{i}" for i in range(1000)), lambda s: safe("{" + s + "}"))
    bad = pick((f"bad-{i}" for i in range(1000)), lambda s: not safe("{" + s + "}"))
    good_iid = pick((f"g-{i}" for i in range(1000)), lambda i: safe(keys.service(good).rpc_channel(i)))
    bad_iid = pick((f"b-{i}" for i in range(1000)), lambda i: safe(keys.service(bad).rpc_channel(i)))
    client_id = pick((f"c-{i}" for i in range(1000)), lambda c: safe(keys.reply_channel(c)))
    await topo.aclose()

    a = ServiceInstance(url, good, good_iid, namespace=namespace, ttl=30, sweep_interval=0)
    b = ServiceInstance(url, bad, bad_iid, namespace=namespace, ttl=30, sweep_interval=0)
    echo(a)
    echo(b)
    async with a, b, ServiceClient(url, namespace=namespace, client_id=client_id, owner_cache_ttl=0) as client:
        await a.register_resource(["x"])
        await b.register_resource(["y"])
        assert (await client.call(good, "echo", resource_id="x"))["iid"] == good_iid
        assert (await client.call(bad, "echo", resource_id="y"))["iid"] == bad_iid
        own_cluster.servers[2].kill()
        started = time.monotonic()
        with pytest.raises(ResourceRouterError) as info:
            await client.call(bad, "echo", resource_id="y", timeout=10.0)
        assert info.value.code == 503, info.value  # Redis unreachable: not a timeout
        assert time.monotonic() - started < 5.0
        for i in range(50):
            assert (await client.call(good, "echo", i, resource_id="x"))["p"] == i


async def _node_ids(cluster: RedisCluster3) -> dict[int, str]:
    return {s.port: command_value(s.port, "CLUSTER", "MYID").decode() for s in cluster.servers}


@pytest.mark.chaos
async def test_a_slot_that_moves_is_subscribed_again_where_it_went(own_cluster: RedisCluster3, namespace: str) -> None:
    url = own_cluster.url
    keys = KeySpace(namespace).service("moving")
    async with (
        ServiceInstance(url, "moving", "mover", namespace=namespace, ttl=30, sweep_interval=0) as inst,
        ServiceClient(url, namespace=namespace, owner_cache_ttl=0) as client,
    ):
        echo(inst)
        await inst.register_resource(["m"])
        assert (await client.call("moving", "echo", resource_id="m"))["iid"] == "mover"
        topo = connect(url)
        assert isinstance(topo, aredis.RedisCluster)
        await topo.initialize()
        channel = keys.rpc_channel("mover")
        slot = topo.keyslot(channel)
        source = port_of(topo, channel)
        await topo.aclose()
        target = next(s.port for s in own_cluster.servers if s.port != source)
        ids = await _node_ids(own_cluster)
        for server in own_cluster.servers:  # the slot holds no keys: reassign it directly
            command_value(server.port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])
        deadline = time.monotonic() + 10.0
        while True:
            try:
                reply = await client.call("moving", "echo", resource_id="m", timeout=1.0)
                break
            except ResourceRouterError as exc:
                assert exc.code in (503, 504), exc
                assert time.monotonic() < deadline, "the instance was not heard again after its slot moved"
                await asyncio.sleep(0.1)
        assert reply["iid"] == "mover"
        assert inst.listening


# -- CLI -----------------------------------------------------------------------------------------------
async def test_the_cli_reads_ownership_through_a_cluster_url(cluster_url: str, namespace: str) -> None:
    async with ResourceRegistry(cluster_url, namespace=namespace, metrics_registry=CollectorRegistry()) as reg:
        await reg.register_instance("cli-svc", "i-1", ttl=30)
        granted = await reg.register_resource("cli-svc", "i-1", ["acct-1", "acct-2"])

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(
            build_app(), [*args, "--redis", cluster_url, "--namespace", namespace, "--json"], catch_exceptions=False
        )

    loop = asyncio.get_running_loop()
    owner = await loop.run_in_executor(None, invoke, "owner", "cli-svc", "acct-1")
    assert owner.exit_code == 0, owner.output
    assert f'"fencing_token": {granted.fencing_tokens["acct-1"]}' in owner.output
    resources = await loop.run_in_executor(None, invoke, "resources", "cli-svc")
    assert resources.exit_code == 0 and "acct-2" in resources.output
    instances = await loop.run_in_executor(None, invoke, "instances", "cli-svc")
    assert instances.exit_code == 0 and '"instance_id": "i-1"' in instances.output
