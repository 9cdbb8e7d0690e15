"""A real Redis Cluster of three masters started from the ``redis-server`` binary (no Docker).

Each master is a ``RedisServer`` started with cluster mode on; the slots are split in three ranges
with ``CLUSTER ADDSLOTSRANGE`` and the nodes meet each other with ``CLUSTER MEET``. Tests may kill a
master (its slots then fail, the others keep working) and start it again.
"""

from __future__ import annotations

import random
import socket
import time

from tests.support.redis_server import RedisServer

__all__ = ["RedisCluster3", "cluster_port", "command_value"]

SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(1000):
        port = random.randint(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command with a plain socket (RESP) and return the raw first reply line(s)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(b"".join(parts))
        chunks = []
        s.settimeout(timeout)
        while True:
            chunk = s.recv(65536)
            chunks.append(chunk)
            if not chunk or chunk.endswith(b"\r\n"):
                break
        return b"".join(chunks)


def command_value(port: int, *args: str) -> bytes:
    """The value of a simple-string or bulk-string reply (raises on an error reply)."""
    raw = _command(port, *args)
    if raw.startswith(b"-"):
        raise RuntimeError(raw.decode(errors="replace").strip())
    if raw.startswith(b"+"):
        return raw[1:].rstrip(b"\r\n")
    if raw.startswith(b"$"):
        header, _, rest = raw.partition(b"\r\n")
        return rest[: int(header[1:])]
    return raw


def _node(port: int) -> RedisServer:
    return RedisServer(
        port,
        extra_args=(
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-node-timeout",
            "1500",
            "--cluster-require-full-coverage",
            "no",
            "--cluster-allow-reads-when-down",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ),
    )


class RedisCluster3:
    """Three masters on free ports (and ``replicas`` replicas of each: a failover promotes one when its
    master dies, after ``cluster-node-timeout``); ``url`` is the ``redis+cluster://`` form."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.servers: list[RedisServer] = [_node(cluster_port()) for _ in range(masters)]
        #: replica servers of each master, by the master's index
        self.replicas: list[list[RedisServer]] = [
            [_node(cluster_port()) for _ in range(replicas)] for _ in range(masters)
        ]

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def start(self, timeout: float = 20.0) -> RedisCluster3:
        for server in self.servers:
            server.start()
        n = len(self.servers)
        per = SLOTS // n
        for i, server in enumerate(self.servers):
            first = i * per
            last = SLOTS - 1 if i == n - 1 else (i + 1) * per - 1
            _command(server.port, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
        for server in self.servers[1:]:
            _command(server.port, "CLUSTER", "MEET", "127.0.0.1", str(self.servers[0].port))
        self.wait_ok(timeout)
        if any(self.replicas):
            for master, replicas in zip(self.servers, self.replicas, strict=True):
                master_id = command_value(master.port, "CLUSTER", "MYID").decode()
                for replica in replicas:
                    replica.start()
                    _command(replica.port, "CLUSTER", "MEET", "127.0.0.1", str(self.servers[0].port))
                    self._replicate(replica.port, master_id, timeout)
            self.wait_ok(timeout)
        return self

    def _replicate(self, port: int, master_id: str, timeout: float) -> None:
        """``CLUSTER REPLICATE`` once the new node has learnt of the master (gossip takes a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                command_value(port, "CLUSTER", "REPLICATE", master_id)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def replicas_synced(self) -> bool:
        """True when every replica's link to its master is up and each master, asked with ``WAIT``,
        hears an acknowledgement from all of its replicas (a link can be up while the master still
        counts the replica as syncing)."""
        for master, replicas in zip(self.servers, self.replicas, strict=True):
            if not replicas:
                continue
            for replica in replicas:
                info = command_value(replica.port, "INFO", "replication").decode()
                if "master_link_status:up" not in info:
                    return False
            acked = _command(master.port, "WAIT", str(len(replicas)), "200")
            if not acked.startswith(b":") or int(acked[1:].strip()) < len(replicas):
                return False
        return True

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._node_ok(s.port) for s in self.live()):
                return
            time.sleep(0.05)
        raise RuntimeError("the test Redis Cluster did not become ready")

    def _node_ok(self, port: int) -> bool:
        try:
            info = _command(port, "CLUSTER", "INFO")
            nodes = _command(port, "CLUSTER", "NODES")
        except OSError:
            return False
        known = nodes.count(b"master")
        return b"cluster_state:ok" in info and known >= len(self.servers)

    def live(self) -> list[RedisServer]:
        return [
            s for s in (*self.servers, *(r for rs in self.replicas for r in rs)) if s.proc and s.proc.poll() is None
        ]

    def master_for_slot(self, slot: int) -> RedisServer:
        per = SLOTS // len(self.servers)
        return self.servers[min(slot // per, len(self.servers) - 1)]

    def stop(self) -> None:
        for server in (*self.servers, *(r for rs in self.replicas for r in rs)):
            server.stop()

    def __enter__(self) -> RedisCluster3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
