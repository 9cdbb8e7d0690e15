"""The benchmark's own redis-server on a free port, NATS reachability, and process CPU accounting."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.redis_server import RedisServer, free_port

__all__ = ["RedisProcess", "find_pid", "free_port", "nats_reachable", "proc_cpu_s", "redis_server_version"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def redis_server_version() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or None


class RedisProcess(RedisServer):
    """The benchmark's private ``redis-server`` (no persistence) with 16 databases (one per scale size)."""

    def __init__(self) -> None:
        super().__init__(extra_args=("--databases", "16"))


def nats_reachable(url: str, timeout: float = 0.5) -> str | None:
    """None when a TCP connection to the NATS URL succeeds, else the reason."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        with socket.create_connection((host, port), timeout):
            return None
    except OSError as exc:
        return f"NATS not reachable at {host}:{port} ({exc.strerror or exc})"


def proc_cpu_s(pid: int | None) -> float:
    """utime + stime of a process in seconds (0.0 when unknown or gone)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def find_pid(*needles: str) -> int | None:
    """Best effort: the pid of a local process whose command line contains every needle."""
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if all(n in cmd for n in needles):
                    return int(entry)
    return None
