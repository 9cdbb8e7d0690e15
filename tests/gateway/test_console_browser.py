"""The operator console in a real browser: Playwright driving Debian's Chromium against a replica
served by uvicorn on a free port, with instances of a test service on the real Redis. The page shows
the instances, loses one when it is killed (its lease runs out, the sweeper announces it on the feed),
finds a resource by id, and draws the calls per second.

Set ``RR_UPDATE_SCREENSHOT=1`` to write the screenshot the README shows (docs/console.png).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from resource_router import RouteRequest, RouterSettings
from resource_router.gateway import GatewaySettings, create_app
from resource_router.routing.instance import ServiceInstance

# The first test's budget includes installing Chromium when it is missing (apt: minutes at most).
pytestmark = [pytest.mark.real_redis, pytest.mark.timeout(900)]

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
SVC = "web"


def _install_chromium() -> str:
    """Install Debian's ``chromium`` package when it is missing; the reason when that cannot be done."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing it needs root (apt-get install -y chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, seconds in (([apt, "update", "-q"], 240), ([apt, "install", "-y", "-q", "chromium"], 540)):
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(command[1:])} failed: {exc}"
        if done.returncode != 0:
            return f"{' '.join(command[1:])} failed: {done.stderr.strip()[-300:]}"
    return ""


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.async_api", reason="the browser test needs the dev group's playwright")
    if not os.access(CHROMIUM, os.X_OK):
        why = _install_chromium()
        if not os.access(CHROMIUM, os.X_OK):
            pytest.skip(f"the console's browser test needs {CHROMIUM} (Debian's chromium package): {why}")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def replica(redis_url: str, namespace: str, metrics_registry: CollectorRegistry) -> AsyncIterator[str]:
    """A replica served by uvicorn on a free port (its sweeper on, so a dead instance is announced), set up
    with the partition count of the service it routes to (the console reads any service with its own)."""
    import uvicorn

    settings = GatewaySettings(
        router=RouterSettings(redis_url=redis_url, namespace=namespace, partitions=4),  # routes to SVC
        sweep_interval=0.3,
        console_stream_seconds=5,
        console_keepalive_seconds=1,
        log_level="warning",
    )
    app = create_app(settings, metrics_registry=metrics_registry)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # pytest's, not ours
    task = asyncio.get_running_loop().create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.gateway.begin_shutdown()
        server.should_exit = True
        await asyncio.wait_for(task, 20)


def make_instance(redis_url: str, namespace: str, registry: CollectorRegistry, iid: str, **kw: Any) -> ServiceInstance:
    inst = ServiceInstance(
        redis_url,
        SVC,
        iid,
        ttl=1.0,
        namespace=namespace,
        metrics_registry=registry,
        sweep_interval=0,
        partitions=4,
        **kw,
    )

    @inst.handler("get")
    async def get(request: RouteRequest) -> dict[str, Any]:
        return {"id": request.resource_id, "by": iid}

    return inst


async def test_the_console_shows_instances_loses_a_killed_one_and_finds_a_resource(
    chromium: str,
    replica: str,
    redis_url: str,
    namespace: str,
    metrics_registry: CollectorRegistry,
    tmp_path: Path,
) -> None:
    from playwright.async_api import async_playwright, expect

    browser_log: list[str] = []

    web1 = make_instance(redis_url, namespace, metrics_registry, "web-1")
    web2 = make_instance(redis_url, namespace, metrics_registry, "web-2")
    web3 = make_instance(redis_url, namespace, metrics_registry, "web-3", accept_placement=True)
    async with contextlib.AsyncExitStack() as stack:
        for inst in (web1, web2, web3):
            await stack.enter_async_context(inst)
        await web1.register_resource([f"user-{i}" for i in range(1, 9)], metadata={"plan": "pro"})
        await web2.register_resource(["user-10", "user-11", "user-12"])
        await web3.register_resource(["user-20"])

        stop_calls = asyncio.Event()

        async def traffic() -> None:  # calls through the replica, for the chart
            async with httpx.AsyncClient(base_url=replica, timeout=5) as http:
                i = 0
                while not stop_calls.is_set():
                    rid = ["user-1", "user-2", "user-10", "user-20", "user-3"][i % 5]
                    answer = await http.post(
                        "/v1/route", json={"service_name": SVC, "resource_id": rid, "method": "get"}
                    )
                    assert answer.status_code == 200, answer.text
                    i += 1
                    await asyncio.sleep(0.02)

        calls = asyncio.get_running_loop().create_task(traffic())
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, args=FLAGS)
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 860})
                    page.on("console", lambda msg: browser_log.append(f"{msg.type}: {msg.text}"))
                    page.on("pageerror", lambda exc: browser_log.append(f"pageerror: {exc}"))
                    outside: list[str] = []
                    page.on("request", lambda req: None if req.url.startswith(replica) else outside.append(req.url))
                    await page.goto(f"{replica}/console?service={SVC}")

                    # the instances, their owned counts and the volunteer flag
                    rows = page.locator("#instances tbody tr")
                    await expect(rows).to_have_count(3, timeout=10_000)
                    row = page.locator('#instances tr[data-instance="web-1"] td')
                    await expect(row.nth(3)).to_have_text("8")
                    await expect(page.locator('#instances tr[data-instance="web-2"] td').nth(3)).to_have_text("3")
                    await expect(page.locator('#instances tr[data-instance="web-3"] td').nth(2)).to_contain_text("hash")
                    await expect(page.locator('#instances tr[data-instance="web-1"] td').nth(2)).to_have_text("-")
                    await expect(page.locator("#spread-summary")).to_have_text("(12 resources, 4 partitions)")
                    await expect(page.locator("#spread-chart rect")).to_have_count(4)

                    # the feed shows the registrations (one event per partition an id went to); the chart
                    # gets a line per instance called
                    for iid in ("web-1", "web-2", "web-3"):
                        registered = page.locator('#events li[data-type="ResourceRegistered"]', has_text=iid)
                        await expect(registered.first).to_be_visible(timeout=10_000)
                    await expect(page.locator("#calls-chart polyline")).to_have_count(3, timeout=10_000)

                    # find a resource by id
                    await page.fill("#resource-id", "user-10")
                    await page.click("#search button")
                    await expect(page.locator('#found dd[data-field="owner"]')).to_have_text("web-2")
                    await expect(page.locator('#found dd[data-field="fencing token"]')).to_have_text(
                        str((await web2.registry.get_resource_owner(SVC, "user-10")).fencing_token)
                    )
                    await page.fill("#resource-id", "user-3")
                    await page.click("#search button")
                    await expect(page.locator('#found dd[data-field="metadata"]')).to_have_text('{"plan":"pro"}')
                    update = os.environ.get("RR_UPDATE_SCREENSHOT") == "1"
                    await asyncio.sleep(15 if update else 2)  # some seconds of calls on the chart
                    await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
                    if update:
                        await page.screenshot(path=str(SCREENSHOT), full_page=True)

                    # no more calls (one for a resource of web-2 would be placed on the volunteer web-3)
                    stop_calls.set()
                    await calls
                    # kill web-2: its row goes once its lease runs out, the sweeper's release shows on the feed
                    await web2.abort()
                    await expect(page.locator('#instances tr[data-instance="web-2"]')).to_have_count(0, timeout=10_000)
                    await expect(rows).to_have_count(2)
                    offline = page.locator("#events li", has_text="instance_offline")
                    await expect(offline.first).to_be_visible(timeout=10_000)
                    released: set[str] = set()
                    for _ in range(100):  # one event per partition that held some of its ids
                        texts = await offline.all_inner_texts()
                        released = {w.strip(",") for t in texts for w in t.split() if w.startswith("user-")}
                        if released == {"user-10", "user-11", "user-12"}:
                            break
                        await asyncio.sleep(0.1)
                    assert released == {"user-10", "user-11", "user-12"}
                    assert all("web-2" in t for t in await offline.all_inner_texts())
                    await expect(page.locator("#spread-summary")).to_have_text("(9 resources, 4 partitions)")
                    await page.fill("#resource-id", "user-11")
                    await page.click("#search button")
                    await expect(page.locator("#not-found")).to_have_text(f"Nobody owns user-11 in {SVC}.")
                    await expect(page.locator("#found")).to_be_hidden()
                    assert outside == []  # every asset and call went to the replica
                finally:
                    await browser.close()
        finally:
            stop_calls.set()
            await calls
    assert not [line for line in browser_log if line.startswith("pageerror")], browser_log
