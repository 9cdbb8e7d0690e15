"""``resource-router console`` as users run it: a process that prints the URL of a console on
127.0.0.1, serves it at once, and stops promptly on SIGTERM even with a live feed open."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from resource_router import ResourceRegistry
from resource_router.cli.exit_codes import EXIT_CANNOT_LISTEN, EXIT_INVALID
from tests.support.processes import clean_env, cli_command

pytestmark = pytest.mark.real_redis


def start_console(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*cli_command(), "console", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
    )


async def test_the_console_prints_its_url_serves_it_and_stops_on_sigterm(redis_url: str) -> None:
    namespace = "t" + uuid.uuid4().hex[:12]
    async with ResourceRegistry(redis_url, namespace=namespace) as reg:
        await reg.register_instance("svc", "i-1", ttl=30)
        await reg.register_resource("svc", "i-1", ["r-1"])
        proc = start_console("--redis", redis_url, "--namespace", namespace)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith(f"console of namespace {namespace}: http://127.0.0.1:")
            url = line.split(": ", 1)[1]
            assert url.endswith("/console")
            base = url.removesuffix("/console")
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                page = await http.get("/console")  # answered as soon as the line is printed
                assert page.status_code == 200 and "console/assets/console.js" in page.text
                assert (await http.get("/v1/console/services")).json()["services"] == ["svc"]
                body = (await http.get("/v1/console/services/svc")).json()
                assert [(i["instance_id"], i["owned"]) for i in body["instances"]] == [("i-1", 1)]

            # a live feed is open (a browser tab): SIGTERM still ends the process within seconds
            opened = threading.Event()

            def read_feed() -> None:
                with (
                    httpx.Client(base_url=base, timeout=30) as http,
                    http.stream("GET", "/v1/console/services/svc/events") as feed,
                ):
                    opened.set()
                    for _ in feed.iter_raw():
                        pass

            reader = threading.Thread(target=read_feed, daemon=True)
            reader.start()
            assert opened.wait(10)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal once its graceful shutdown is done: the status says SIGTERM
            assert proc.wait(15) == -signal.SIGTERM
            assert time.monotonic() - started < 5
            reader.join(10)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, errors = proc.communicate(timeout=10)  # reads and closes both pipes
        assert "Traceback" not in errors, errors


def test_the_console_needs_a_redis_url_and_a_free_port(redis_url: str) -> None:
    no_url = subprocess.run([*cli_command(), "console"], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert no_url.returncode == EXIT_INVALID
    assert "a replica needs a Redis URL" in no_url.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [*cli_command(), "console", "--redis", redis_url, "--port", str(port)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
    assert busy.returncode == EXIT_CANNOT_LISTEN
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
