"""Starting and stopping writes no warning: a client, an instance and a router replica run in processes of
their own with every warning turned into an error (``-W error``), as a user's strict CI would run them,
and so does ``resource-router demo``. A dependency that starts to warn at start (redis-py 8.2 did, about
the synchronous Retry on asyncio clients) fails here before it reaches a user."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.processes import clean_env, cli_command
from tests.support.redis_server import free_port

SVC = "quiet"

#: An instance with a handler, a resource it owns and a call to it through a client, with the public API
#: only; then it keeps serving (for the replica's call) until its stdin closes.
LIBRARY = """
import asyncio
import sys

from resource_router import ServiceClient, ServiceInstance

URL, NAMESPACE, SVC = sys.argv[1:4]


async def main() -> None:
    instance = ServiceInstance(URL, SVC, "quiet-1", namespace=NAMESPACE)

    @instance.handler("echo")
    async def echo(request):
        return {"params": request.params, "resource_id": request.resource_id}

    async with instance:
        await instance.register_resource(["r-1"])
        async with ServiceClient(URL, namespace=NAMESPACE) as client:
            answer = await client.call(SVC, "echo", {"x": 1}, resource_id="r-1")
        assert answer == {"params": {"x": 1}, "resource_id": "r-1"}, answer
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    print("stopped", flush=True)


asyncio.run(main())
"""

#: The console script's entry point, with ``-W error`` before any import.
SERVE = "import sys; from resource_router.cli import main; sys.exit(main())"

#: What a warning or a crash leaves in a replica's log lines (JSON, on stderr by design).
NOISE = ("Warning", "warning:", "Traceback")


def _wait_ready(url: str, replica: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert replica.poll() is None, f"the replica exited with {replica.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the replica was not ready in {timeout}s:\n{log.read_text()}"
        time.sleep(0.05)


def test_client_instance_and_replica_start_and_stop_without_a_warning(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "replica.log"
    env = clean_env()
    serve = ["serve", "--redis", redis_url, "--namespace", namespace, "--port", str(port), "--sweep-interval", "0"]
    with log.open("wb") as replica_err:
        replica = subprocess.Popen(
            [sys.executable, "-W", "error", "-c", SERVE, *serve],
            stdout=subprocess.DEVNULL,
            stderr=replica_err,
            env=env,
        )
    library = subprocess.Popen(
        [sys.executable, "-W", "error", "-c", LIBRARY, redis_url, namespace, SVC],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert library.stdout is not None and library.stdin is not None
        assert library.stdout.readline() == b"ready\n", library.communicate(timeout=10)
        _wait_ready(url, replica, log)
        routed = httpx.post(
            f"{url}/v1/route",
            json={"service_name": SVC, "resource_id": "r-1", "method": "echo", "params": [2]},
            timeout=5.0,
        )
        assert routed.status_code == 200, routed.text
        assert routed.json()["result"] == {"params": [2], "resource_id": "r-1"}
        assert routed.json()["instance_id"] == "quiet-1"

        out, err = library.communicate(b"\n", timeout=10)
        assert (library.returncode, out, err.decode()) == (0, b"stopped\n", "")

        replica.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once its graceful shutdown is done: the status says "SIGTERM"
        assert replica.wait(timeout=15) == -signal.SIGTERM, log.read_text()
    finally:
        for proc in (library, replica):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log.read_text().splitlines()
    assert lines, "the replica logged nothing (its JSON lines go to stderr)"
    assert [line for line in lines if any(word in line for word in NOISE)] == []


def test_the_demo_runs_without_a_warning() -> None:
    demo = subprocess.run(
        [*cli_command(), "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(PYTHONWARNINGS="error"),
    )
    assert demo.returncode == 0, demo.stderr
    assert "Warning" not in demo.stderr, demo.stderr
    assert "Traceback" not in demo.stderr, demo.stderr
