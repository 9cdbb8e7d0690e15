"""The product's commands as real processes: ``resource-router serve`` replicas and example instances
(``examples/echo_instance.py``), started with an environment of their own and waited for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]  # the repository
ECHO = ROOT / "examples" / "echo_instance.py"
SVC = "echo"  # the service the example instances serve
TTL = "1.5"


def cli_command() -> list[str]:
    """The installed console script (what users run), else ``python -m resource_router.cli``."""
    script = Path(sys.executable).parent / "resource-router"
    if script.exists():
        return [str(script)]
    found = shutil.which("resource-router")
    return [found] if found else [sys.executable, "-m", "resource_router.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESOURCE_ROUTER_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", **extra)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)


def start_replica(redis_url: str, namespace: str, logdir: Path, name: str, *args: str) -> Proc:
    port = free_port()
    log = logdir / f"{name}.log"
    cmd = [
        *cli_command(),
        "serve",
        "--redis",
        redis_url,
        "--namespace",
        namespace,
        "--port",
        str(port),
        "--sweep-interval",
        "0.5",
        *args,
    ]
    with log.open("wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT)
    return Proc(name, popen, log, port)


def start_instance(redis_url: str, namespace: str, logdir: Path, instance_id: str, resources: str) -> Proc:
    log = logdir / f"{instance_id}.log"
    cmd = [
        sys.executable,
        str(ECHO),
        "--redis",
        redis_url,
        "--namespace",
        namespace,
        "--service",
        SVC,
        "--instance-id",
        instance_id,
        "--resources",
        resources,
        "--ttl",
        TTL,
    ]
    with log.open("wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT)
    return Proc(instance_id, popen, log)


def wait_replica(proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.text()}")
        try:
            if httpx.get(f"{proc.url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} not ready within {timeout}s:\n{proc.text()}")


def wait_instance(proc: Proc, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.text()}")
        for line in proc.text().splitlines():
            if line.startswith("{") and '"ready"' in line:
                ready: dict[str, Any] = json.loads(line)
                return ready
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} not ready within {timeout}s:\n{proc.text()}")
