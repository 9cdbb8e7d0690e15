"""A replicated Redis for failover tests: a master, replicas (optionally behind a TCP proxy, to cut
their link) and three Sentinels, all started from the installed binaries on free ports."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.redis_cluster import command_value
from tests.support.redis_server import RedisServer, free_port

__all__ = ["ReplicaSet", "Sentinels", "replication_offset", "wait_replicated"]

#: Replicas start syncing at once (the default waits 5 s before a diskless transfer).
FAST_SYNC = ("--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1")


def replication_offset(port: int) -> int:
    info = command_value(port, "INFO", "replication").decode()
    for line in info.splitlines():
        if line.startswith("master_repl_offset:"):
            return int(line.split(":", 1)[1])
    return -1


def wait_replicated(master: RedisServer, replicas: list[RedisServer], timeout: float = 10.0) -> None:
    """Wait until every replica is connected and has the master's offset."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = command_value(master.port, "INFO", "replication").decode()
        online = info.count("state=online")
        if online >= len(replicas):
            target = replication_offset(master.port)
            if all(replication_offset(r.port) >= target for r in replicas):
                return
        time.sleep(0.05)
    raise RuntimeError("the replicas did not catch up with the master")


class ReplicaSet:
    """A master and ``replicas`` replicas. ``link_port(i)`` is the port replica ``i`` reaches the master
    on: the master's own, or a proxy's the test starts (``upstream=lambda i: proxy_port``)."""

    def __init__(self, replicas: int = 1) -> None:
        self.master = RedisServer(extra_args=FAST_SYNC)
        self.replicas: list[RedisServer] = []
        self._count = replicas

    def start(self, link_ports: list[int] | None = None) -> ReplicaSet:
        self.master.start()
        for i in range(self._count):
            port = link_ports[i] if link_ports else self.master.port
            replica = RedisServer(extra_args=(*FAST_SYNC, "--replicaof", "127.0.0.1", str(port)))
            self.replicas.append(replica.start())
        return self

    def wait(self, timeout: float = 10.0) -> None:
        wait_replicated(self.master, self.replicas, timeout)

    def promote(self, replica: RedisServer) -> None:
        """What Sentinel or a cluster failover does: ``REPLICAOF NO ONE``."""
        command_value(replica.port, "REPLICAOF", "NO", "ONE")

    def stop(self) -> None:
        for server in (self.master, *self.replicas):
            server.stop()


class Sentinels:
    """Three Sentinels monitoring ``master`` under the name ``name`` (quorum 2, a master is down after
    ``down_after_ms``)."""

    def __init__(self, master_port: int, name: str = "mymaster", down_after_ms: int = 500, count: int = 3) -> None:
        self.name = name
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dirs = [Path(tempfile.mkdtemp(prefix="rr-sentinel-")) for _ in range(count)]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + f"/{self.name}"

    def start(self, timeout: float = 10.0) -> Sentinels:
        binary = shutil.which("redis-server")
        assert binary is not None
        for port, folder in zip(self.ports, self.dirs, strict=True):
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} 3000\n"
                f"sentinel parallel-syncs {self.name} 1\n"
            )
            self.procs.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, RuntimeError):
                if all(self.master_address(p) is not None for p in self.ports) and self.know_each_other():
                    return self
            time.sleep(0.05)
        raise RuntimeError("the Sentinels did not start")

    def master_address(self, port: int | None = None) -> tuple[str, int] | None:
        raw = command_value(port or self.ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        parts = [p for p in raw.split(b"\r\n") if p and not p.startswith((b"*", b"$"))]
        return (parts[0].decode(), int(parts[1])) if len(parts) == 2 else None

    def know_each_other(self) -> bool:
        raw = command_value(self.ports[0], "SENTINEL", "SENTINELS", self.name)
        return raw.count(b"runid") >= len(self.ports) - 1

    def wait_master(self, port: int, timeout: float = 15.0) -> float:
        """Seconds until every Sentinel names ``port`` the master."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with contextlib.suppress(OSError, RuntimeError):
                if all((self.master_address(p) or ("", 0))[1] == port for p in self.ports):
                    return time.monotonic() - start
            time.sleep(0.05)
        raise RuntimeError(f"the Sentinels did not switch to {port}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)
