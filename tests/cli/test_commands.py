"""The ``resource-router`` command line against the real Redis (typer's CliRunner, and subprocesses
where a real process matters: ``events --follow``, the import guards)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner

from resource_router import InvalidRequestError, ResourceRegistry, RouterSettings
from resource_router._version import __version__
from resource_router.cli import build_app, main
from resource_router.cli import inspect as cli_inspect
from resource_router.cli.exit_codes import EXIT_CANNOT_LISTEN, EXIT_ERROR, EXIT_INVALID, EXIT_REDIS_UNAVAILABLE
from resource_router.gateway import GatewaySettings
from resource_router.observability.rendering import configure_logging
from tests.support.processes import ROOT, clean_env, cli_command
from tests.support.redis_server import RedisServer, free_port

SVC = "billing"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures structlog and the root logger, as an application does; undo it after."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RESOURCE_ROUTER_REDIS_URL", "RESOURCE_ROUTER_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(build_app(), list(args), env=env, catch_exceptions=False)


@pytest.fixture
def populated(redis_url: str, namespace: str) -> dict[str, Any]:
    """Two instances of ``billing``: i-1 owns acct-1 and acct-2, i-2 owns acct-3 (with metadata)."""

    async def setup() -> dict[str, Any]:
        async with ResourceRegistry(redis_url, namespace=namespace) as reg:
            await reg.register_instance(SVC, "i-1", ttl=60, metadata={"zone": "eu"})
            await reg.register_instance(SVC, "i-2", ttl=60)
            r1 = await reg.register_resource(SVC, "i-1", ["acct-1", "acct-2"], trace_id="trace-setup")
            r2 = await reg.register_resource(SVC, "i-2", ["acct-3"], metadata={"tier": "gold"})
            await reg.release_resource(SVC, "i-1", ["acct-2"])
            return {"tokens": {**r1.fencing_tokens, **r2.fencing_tokens}}

    return asyncio.run(setup())


def test_owner_table_and_json(redis_url: str, namespace: str, populated: dict[str, Any]) -> None:
    table = invoke("owner", SVC, "acct-3", "--redis", redis_url, "--namespace", namespace)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].rstrip() == "owner of acct-3 in billing"
    row = next(line for line in lines if "acct-3" in line and "i-2" in line)
    assert str(populated["tokens"]["acct-3"]) in row
    assert '{"tier":"gold"}' in row
    assert table.stderr == ""

    as_json = invoke("owner", SVC, "acct-3", "--redis", redis_url, "-n", namespace, "--json")
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert {k: v for k, v in data.items() if k != "registered_at"} == {
        "resource_id": "acct-3",
        "owner_instance_id": "i-2",
        "service_name": SVC,
        "fencing_token": populated["tokens"]["acct-3"],
        "metadata": {"tier": "gold"},
    }


def test_owner_not_found_exit_1(redis_url: str, namespace: str, populated: dict[str, Any]) -> None:
    result = invoke("owner", SVC, "acct-2", "--redis", redis_url, "-n", namespace)
    assert result.exit_code == EXIT_ERROR
    assert result.stdout == ""
    assert result.stderr == "error: resource 'acct-2' of service 'billing' has no owner\n"

    as_json = invoke("owner", SVC, "acct-2", "--redis", redis_url, "-n", namespace, "--json")
    assert as_json.exit_code == EXIT_ERROR
    assert json.loads(as_json.stdout) == {"resource_id": "acct-2", "service_name": SVC, "owner_instance_id": None}


def test_resources_and_instance_filter(redis_url: str, namespace: str, populated: dict[str, Any]) -> None:
    everything = invoke("resources", SVC, "--redis", redis_url, "-n", namespace, "--json")
    assert everything.exit_code == 0
    assert [(r["resource_id"], r["owner_instance_id"]) for r in json.loads(everything.stdout)] == [
        ("acct-1", "i-1"),
        ("acct-3", "i-2"),
    ]
    table = invoke("resources", SVC, "--instance", "i-1", "--redis", redis_url, "-n", namespace)
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].rstrip() == "1 resource(s) in billing owned by i-1"
    assert "acct-1" in table.stdout
    assert "acct-3" not in table.stdout


def test_instances(redis_url: str, namespace: str, populated: dict[str, Any]) -> None:
    result = invoke("instances", SVC, "--redis", redis_url, "-n", namespace, "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [(i["instance_id"], i["resource_count"], i["ttl"], i["metadata"]) for i in rows] == [
        ("i-1", 1, 60.0, {"zone": "eu"}),
        ("i-2", 1, 60.0, {}),
    ]
    table = invoke("instances", SVC, "--redis", redis_url, "-n", namespace)
    assert table.stdout.splitlines()[0].rstrip() == "2 live instance(s) of billing"
    assert "i-1" in table.stdout
    assert "60s" in table.stdout


def test_events_recent(redis_url: str, namespace: str, populated: dict[str, Any]) -> None:
    result = invoke("events", SVC, "--redis", redis_url, "-n", namespace, "--json")
    assert result.exit_code == 0
    events = json.loads(result.stdout)
    assert [(e["type"], e["instance_id"], e["resource_ids"], e["reason"]) for e in events] == [
        ("InstanceRegistered", "i-1", [], "registered"),
        ("InstanceRegistered", "i-2", [], "registered"),
        ("ResourceRegistered", "i-1", ["acct-1", "acct-2"], "registered"),
        ("ResourceRegistered", "i-2", ["acct-3"], "registered"),
        ("ResourceReleased", "i-1", ["acct-2"], "released"),
    ]
    assert events[2]["trace_id"] == "trace-setup"

    last_two = invoke("events", SVC, "--count", "2", "--redis", redis_url, "-n", namespace)
    assert last_two.exit_code == 0
    assert last_two.stdout.splitlines()[0].rstrip() == "last 2 event(s) of billing"
    assert "ResourceReleased" in last_two.stdout
    assert "InstanceRegistered" not in last_two.stdout


def follow(redis_url: str, namespace: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*cli_command(), "events", SVC, "--redis", redis_url, "--namespace", namespace, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=ROOT,
    )


def test_events_follow_replays_then_prints_live_events(redis_url: str, namespace: str) -> None:
    async def produce(instance_id: str, resource: str, trace_id: str) -> None:
        async with ResourceRegistry(redis_url, namespace=namespace) as reg:
            await reg.register_instance(SVC, instance_id, ttl=30)
            await reg.register_resource(SVC, instance_id, [resource], trace_id=trace_id)

    asyncio.run(produce("old-1", "x-0", "before"))
    with follow(redis_url, namespace, "--follow", "--since", "0", "--json") as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            banner = proc.stderr.readline().decode()
            assert banner == f"following ownership events of {SVC} (Ctrl-C to stop)\n"
            replayed = [json.loads(proc.stdout.readline()) for _ in range(2)]
            assert [(e["type"], e["instance_id"]) for e in replayed] == [
                ("InstanceRegistered", "old-1"),
                ("ResourceRegistered", "old-1"),
            ]
            asyncio.run(produce("live-1", "x-1", "follow-trace"))  # appended while following
            first = json.loads(proc.stdout.readline())
            second = json.loads(proc.stdout.readline())
            assert (first["type"], first["instance_id"]) == ("InstanceRegistered", "live-1")
            assert (second["type"], second["resource_ids"], second["trace_id"]) == (
                "ResourceRegistered",
                ["x-1"],
                "follow-trace",
            )
            proc.send_signal(signal.SIGINT)  # Ctrl-C is the normal way out: exit 0, no traceback
            assert proc.wait(10) == 0
            assert b"Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_events_follow_plain_lines(redis_url: str, namespace: str) -> None:
    async def produce() -> None:
        async with ResourceRegistry(redis_url, namespace=namespace) as reg:
            await reg.register_instance(SVC, "p-1", ttl=30)

    asyncio.run(produce())
    with follow(redis_url, namespace, "-f", "--since", "0") as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            # e.g. "2026-01-01 12:00:00.123Z InstanceRegistered instance=p-1 reason=registered"
            assert line.split(" ", 2)[2] == "InstanceRegistered instance=p-1 reason=registered\n"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_events_follow_stops_on_sigterm_and_reports_redis_loss(private_redis: RedisServer) -> None:
    with follow(private_redis.url, "tfollow", "--follow") as proc:
        try:
            assert proc.stderr is not None
            unknown = proc.stderr.readline().decode()
            assert unknown == f"note: no instance of {SVC!r} ever registered in namespace 'tfollow' (yet)\n"
            assert proc.stderr.readline().decode().startswith("following ownership events")
            private_redis.kill()
            assert proc.wait(20) == EXIT_REDIS_UNAVAILABLE
            err = " ".join(proc.stderr.read().decode().split())
            assert err.startswith("error: Redis is unreachable during events (ConnectionError")
            assert f"Is Redis running and reachable at {private_redis.url}?" in err
            assert "Traceback" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
    private_redis.start()
    with follow(private_redis.url, "tfollow", "--follow") as proc:
        try:
            assert proc.stderr is not None
            while not proc.stderr.readline().startswith(b"following"):
                pass
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_events_follow_rejects_bad_since(redis_url: str) -> None:
    result = invoke("events", SVC, "--follow", "--since", "yesterday", "--redis", redis_url)
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == ("error: --since must be '$', '0' or a stream id like 1700000000000-0, not 'yesterday'\n")


def test_no_url_says_memory_is_empty() -> None:
    result = invoke("owner", SVC, "acct-1")
    assert result.exit_code == EXIT_ERROR
    assert "memory:// store, which is empty in a new process" in " ".join(result.stderr.split())
    assert "RESOURCE_ROUTER_REDIS_URL" in result.stderr
    assert result.stderr.splitlines()[-2:] == [
        "error: unknown service 'billing': no instance of it ever registered in namespace 'rr'",
        "no service registered in this namespace: check --namespace and --redis",
    ]

    listed = invoke("instances", SVC, "--json")
    assert listed.exit_code == EXIT_ERROR  # nothing was ever registered there
    assert listed.stdout == ""
    assert "empty in a new process" in " ".join(listed.stderr.split())
    assert f"error: unknown service {SVC!r}" in listed.stderr


def test_env_var_gives_the_url(redis_url: str, namespace: str, populated: dict[str, Any]) -> None:
    result = invoke(
        "owner",
        SVC,
        "acct-1",
        "--json",
        env={"RESOURCE_ROUTER_REDIS_URL": redis_url, "RESOURCE_ROUTER_NAMESPACE": namespace},
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["owner_instance_id"] == "i-1"
    assert result.stderr == ""


@pytest.mark.parametrize("command", [["owner", SVC, "a"], ["resources", SVC], ["instances", SVC], ["events", SVC]])
def test_redis_down_exit_3_without_traceback(command: list[str]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = invoke(*command, "--redis", dead)
    assert result.exit_code == EXIT_REDIS_UNAVAILABLE
    assert result.stdout == ""
    err = " ".join(result.stderr.split())
    assert err.startswith("error: Redis is unreachable")
    assert f"Is Redis running and reachable at {dead}?" in err
    assert "Traceback" not in result.stderr


def test_redis_down_in_a_real_process() -> None:
    dead = f"redis://:secret@127.0.0.1:{free_port()}/0"
    proc = subprocess.run(
        [*cli_command(), "instances", SVC, "--redis", dead],
        capture_output=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == EXIT_REDIS_UNAVAILABLE
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert "secret" not in err  # the password is not echoed back
    assert "redis://***@127.0.0.1" in err


def test_invalid_ids_exit_2(redis_url: str) -> None:
    bad_id = invoke("owner", SVC, "a*b", "--redis", redis_url)
    assert bad_id.exit_code == EXIT_INVALID
    assert bad_id.stderr.startswith("error: resource_id 'a*b' contains '*' (U+002A)")
    bad_service = invoke("events", "-bad", "--redis", redis_url)
    assert bad_service.exit_code == 2  # click: "-bad" is not an option -> usage error
    bad_service = invoke("events", "bad{svc}", "--redis", redis_url)
    assert bad_service.exit_code == EXIT_INVALID
    assert bad_service.stderr.startswith("error: service_name 'bad{svc}' may only use letters")
    bad_instance = invoke("resources", SVC, "--instance", "x|y", "--redis", redis_url)
    assert bad_instance.exit_code == EXIT_INVALID
    assert bad_instance.stderr.startswith("error: instance_id 'x|y' may only use")
    bad_namespace = invoke("instances", SVC, "--redis", redis_url, "-n", "no spaces")
    assert bad_namespace.exit_code == EXIT_INVALID
    assert bad_namespace.stderr.startswith("error: namespace 'no spaces' may only use")


def test_serve_rejects_bad_settings() -> None:
    port = invoke("serve", "--port", "70000")
    assert port.exit_code == EXIT_INVALID
    assert port.stderr == "error: invalid settings: port: Input should be less than or equal to 65535\n"
    fmt = invoke("serve", "--log-format", "xml")
    assert fmt.exit_code == EXIT_INVALID
    assert fmt.stderr.startswith("error: invalid settings: log_format: Input should be 'json' or 'console'")
    scheme = invoke("serve", "--redis", "http://nope", "--port", str(free_port()))
    assert scheme.exit_code == EXIT_INVALID
    assert scheme.stderr.startswith("error: unsupported Redis URL scheme 'http'")


def test_demo_runs_on_the_embedded_store() -> None:
    result = invoke("demo")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("resource-router demo on memory://")
    assert "Instances stopped gracefully: 0 resources left registered; the demo's " in result.stdout
    assert "Traceback" not in result.stderr


def test_version_and_help() -> None:
    assert invoke("--version").stdout == f"resource-router {__version__}\n"
    helped = invoke("--help")
    assert helped.exit_code == 0
    for command in ("owner", "resources", "instances", "events", "serve", "console", "demo"):
        assert command in helped.stdout
    serve_help = " ".join(invoke("serve", "--help").stdout.split())
    for option in ("--redis", "--namespace", "--host", "--port", "--log-format", "--max-body-bytes"):
        assert option in serve_help
    assert "RESOURCE_ROUTER_REDIS_URL" in serve_help


def test_main_returns_exit_codes(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert main(["owner", SVC, "a*b", "--redis", redis_url]) == EXIT_INVALID
    assert main(["owner", SVC, "nobody", "--redis", redis_url, "-n", "tnothing"]) == EXIT_ERROR
    assert main([]) == 2  # no command: help and the usage exit code
    captured = capsys.readouterr()
    assert captured.out.startswith(f"resource-router {__version__}\n")


_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
from resource_router.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize(
    ("blocked", "argv", "expected"),
    [
        (
            {"typer"},
            ["--help"],
            "resource-router's command line needs the 'cli' extra (typer is not installed): "
            "pip install 'resource-router[cli]'\n",
        ),
        (
            {"fastapi"},
            ["serve"],
            "error: the resource-router gateway needs the 'gateway' extra (fastapi is not installed): "
            "pip install 'resource-router[gateway]'\n",
        ),
        (
            {"fakeredis"},
            ["demo"],
            "error: memory:// needs the 'memory' extra (fakeredis with Lua; fakeredis is not installed): "
            "pip install 'resource-router[memory]'\n",
        ),
        (
            {"fakeredis"},
            ["serve", "--embedded", "--port", "0"],
            "error: memory:// needs the 'memory' extra (fakeredis with Lua; fakeredis is not installed): "
            "pip install 'resource-router[memory]'\n",
        ),
    ],
)
def test_import_guards_name_the_pip_command(blocked: set[str], argv: list[str], expected: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCK.format(blocked=blocked, argv=argv)],
        capture_output=True,
        env=clean_env(),
        cwd=Path(ROOT),
        timeout=60,
    )
    assert proc.returncode == EXIT_ERROR
    assert " ".join(proc.stderr.decode().split()) == " ".join(expected.split())


# -- in-process variants (the subprocess tests above are what users see; these also count coverage)


def _follow_in_process(monkeypatch: pytest.MonkeyPatch, after_start: Callable[[], None], *args: str) -> Any:
    """Run ``events --follow`` in this process; ``after_start`` runs 0.3 s after the signal handlers
    are in place (it sends the Ctrl-C, or breaks Redis)."""
    real = cli_inspect.until_signalled

    async def patched(work: Any, *, started: Callable[[], None] | None = None) -> None:
        def hook() -> None:
            if started is not None:
                started()
            asyncio.get_running_loop().call_later(0.3, after_start)

        await real(work, started=hook)

    monkeypatch.setattr(cli_inspect, "until_signalled", patched)
    return invoke("events", SVC, "--follow", *args)


def test_follow_in_process_until_ctrl_c(redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def produce() -> None:
        async with ResourceRegistry(redis_url, namespace=namespace) as reg:
            await reg.register_instance(SVC, "ip-1", ttl=30)
            await reg.register_instance(SVC, "ip-2", ttl=30)
            await reg.register_resource(SVC, "ip-1", ["r-1"], trace_id="t-ip")
            await reg.register_resource(SVC, "ip-2", ["r-1"], force=True)

    asyncio.run(produce())
    result = _follow_in_process(
        monkeypatch, lambda: os.kill(os.getpid(), signal.SIGINT), "--since", "0", "--redis", redis_url, "-n", namespace
    )
    assert result.exit_code == 0
    lines = [line.split(" ", 2)[2] for line in result.stdout.splitlines()]
    assert lines == [
        "InstanceRegistered instance=ip-1 reason=registered",
        "InstanceRegistered instance=ip-2 reason=registered",
        "ResourceRegistered instance=ip-1 reason=registered resources=r-1 trace_id=t-ip",
        lines[3],
    ]
    assert lines[3].startswith("ResourceRegistered instance=ip-2 reason=forced resources=r-1 previous_owners=r-1:ip-1")
    assert result.stderr == f"following ownership events of {SVC} (Ctrl-C to stop)\n"


def test_follow_in_process_redis_lost(private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _follow_in_process(monkeypatch, private_redis.kill, "--redis", private_redis.url, "--json")
    assert result.exit_code == EXIT_REDIS_UNAVAILABLE
    assert " ".join(result.stderr.split()).startswith(
        f"note: no instance of {SVC!r} ever registered in namespace 'rr' (yet) "
        f"following ownership events of {SVC} (Ctrl-C to stop) "
        "error: Redis is unreachable during events (ConnectionError"
    )


def test_serve_builds_settings_from_options_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource_router.gateway as gateway

    seen: list[GatewaySettings] = []

    def fake_run(settings: GatewaySettings, *, setup_logging: object = None) -> None:
        assert setup_logging is configure_logging  # workers configure their logging with it
        seen.append(settings)

    monkeypatch.setattr(gateway, "run", fake_run)
    result = invoke(
        "serve",
        "--port",
        "9001",
        "--log-format",
        "console",
        "--max-body-bytes",
        "2048",
        "--sweep-interval",
        "0",
        "--max-resources-per-instance",
        "7",
        "--workers",
        "3",
        "--max-in-flight",
        "50",
        "--nats",
        "nats://example:4222",
        "--nats-prefix",
        "seed.ipc",
        env={
            "RESOURCE_ROUTER_REDIS_URL": "redis://example:6379/2",
            "RESOURCE_ROUTER_HOST": "0.0.0.0",
            "RESOURCE_ROUTER_NATS_QUEUE": "replicas-blue",
        },
    )
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings == GatewaySettings(
        router=RouterSettings(redis_url="redis://example:6379/2", max_resources_per_instance=7),
        host="0.0.0.0",
        port=9001,
        log_format="console",
        max_body_bytes=2048,
        sweep_interval=0,
        workers=3,
        max_in_flight=50,
        nats_url="nats://example:4222",
        nats_subject_prefix="seed.ipc",
        nats_queue="replicas-blue",
    )
    seen.clear()
    env = {"RESOURCE_ROUTER_PORT": "8123", "RESOURCE_ROUTER_NAMESPACE": "blue", "RESOURCE_ROUTER_EMBEDDED": "1"}
    assert invoke("serve", env=env).exit_code == 0
    assert (seen[0].port, seen[0].namespace, seen[0].redis_url, seen[0].log_format, seen[0].embedded) == (
        8123,
        "blue",
        "memory://",
        "json",
        True,
    )


def test_configure_logging_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from resource_router.observability.logs import get_logger

    configure_logging("json", "info")
    log = get_logger("resource_router.probe").bind(instance_id="i-1")
    log.info("probe.event", trace_id="t-json", duration_ms=1.5, message="a field named like a record attribute")
    log.debug("hidden.event")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("probe.failed", operation="probe")
    structlog.get_logger("app").info("structlog.event", key=1)
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["level"], e["logger"]) for e in lines] == [
        ("probe.event", "info", "resource_router.probe"),
        ("probe.failed", "error", "resource_router.probe"),
        ("structlog.event", "info", "app"),
        ("from uvicorn", "warning", "uvicorn.error"),
    ]
    assert (lines[0]["trace_id"], lines[0]["duration_ms"], lines[0]["instance_id"]) == ("t-json", 1.5, "i-1")
    assert lines[0]["message"] == "a field named like a record attribute"
    assert lines[1]["operation"] == "probe"
    assert 'raise RuntimeError("boom")' in lines[1]["exception"]
    with pytest.raises(InvalidRequestError):
        configure_logging("xml", "info")
    with pytest.raises(InvalidRequestError):
        configure_logging("json", "loud")


# -- found by trying it ----------------------------------------------------------------------------


def test_a_malformed_url_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [*cli_command(), "owner", SVC, "a", "--redis", "redis://:pw@127.0.0.1:notaport/9"],
        capture_output=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == EXIT_INVALID
    assert proc.stdout == b""
    assert proc.stderr.decode() == (
        "error: invalid Redis URL redis://***@127.0.0.1:notaport/9: "
        "Port could not be cast to integer value as 'notaport'\n"
    )


def test_following_into_a_pipe_that_closes_exits_quietly(redis_url: str, namespace: str) -> None:
    """``events --follow | head -3``: once head has its lines, the next write ends the command, quietly."""
    pipeline = f"{' '.join(cli_command())} events {SVC} --follow --since 0 --redis {redis_url} -n {namespace} | head -3"

    async def produce(count: int, start: int) -> None:
        async with ResourceRegistry(redis_url, namespace=namespace) as reg:
            for i in range(start, start + count):
                await reg.register_instance(SVC, f"p-{i}", ttl=30)

    asyncio.run(produce(2, 0))
    with subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", pipeline],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=ROOT,
    ) as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            assert proc.stderr.readline().decode() == f"following ownership events of {SVC} (Ctrl-C to stop)\n"
            for i in range(50):  # head exits after the third line; a later write finds the pipe closed
                if proc.poll() is not None:
                    break
                asyncio.run(produce(1, 2 + i))
            assert proc.wait(20) == 0  # pipefail: the CLI's own exit code counts too
            assert len(proc.stdout.read().decode().splitlines()) == 3
            assert proc.stderr.read() == b""  # no "Redis is unreachable", no BrokenPipeError noise
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_taken_port_has_its_own_message_and_exit_code(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import resource_router.gateway as gateway

    monkeypatch.setattr(gateway, "run", lambda settings, **kw: pytest.fail("the replica must not start"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", "--redis", redis_url, "--port", str(port))
    assert result.exit_code == EXIT_CANNOT_LISTEN
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the address is already in use (another replica or program "
        "listens there)",
        "Choose another --port or --host.",
    ]


def test_a_replica_that_fails_to_start_is_not_reported_as_redis_down(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resource_router.gateway as gateway

    def startup_failure(settings: GatewaySettings, **kw: object) -> None:
        raise SystemExit(3)  # what uvicorn does when its startup fails

    monkeypatch.setattr(gateway, "run", startup_failure)
    result = invoke("serve", "--redis", redis_url, "--port", str(free_port()))
    assert result.exit_code == EXIT_ERROR
    assert result.stderr == "error: the replica could not start: see its log above\n"


def test_serve_needs_a_redis_url_unless_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource_router.gateway as gateway

    seen: list[GatewaySettings] = []
    monkeypatch.setattr(gateway, "run", lambda settings, **kw: seen.append(settings))
    refused = invoke("serve", "--port", str(free_port()))
    assert refused.exit_code == EXIT_INVALID
    assert refused.stderr.startswith("error: invalid settings: a replica needs a Redis URL: pass --redis URL or set")
    explicit = invoke("serve", "--redis", "memory://", "--port", str(free_port()))
    assert explicit.exit_code == EXIT_INVALID
    assert "memory:// is the embedded in-process store" in explicit.stderr
    assert seen == []
    allowed = invoke("serve", "--embedded", "--port", str(free_port()))
    assert allowed.exit_code == 0, allowed.output
    assert (seen[0].embedded, seen[0].redis_url) == (True, "memory://")


def test_an_unknown_service_says_so(redis_url: str, namespace: str, populated: dict[str, Any]) -> None:
    for command in (["instances", "nosuch"], ["resources", "nosuch"], ["events", "nosuch"], ["owner", "nosuch", "x"]):
        result = invoke(*command, "--redis", redis_url, "-n", namespace)
        assert result.exit_code == EXIT_ERROR, command
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"error: unknown service 'nosuch': no instance of it ever registered in namespace '{namespace}'",
            f"known services: {SVC}",
        ]

    async def gone() -> None:  # a known service whose instances all left: an empty answer, not an error
        async with ResourceRegistry(redis_url, namespace=namespace) as reg:
            for instance_id in ("i-1", "i-2"):
                await reg.deregister_instance(SVC, instance_id)

    asyncio.run(gone())
    empty = invoke("instances", SVC, "--redis", redis_url, "-n", namespace)
    assert empty.exit_code == 0
    assert empty.stdout.splitlines()[0].rstrip() == f"0 live instance(s) of {SVC}"


def test_tables_keep_tokens_and_times_whole_at_80_columns(
    redis_url: str, namespace: str, populated: dict[str, Any]
) -> None:
    result = invoke("resources", SVC, "--redis", redis_url, "-n", namespace, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for token in populated["tokens"].values():
        if str(token) in result.stdout:
            break
    else:
        pytest.fail(f"no whole fencing token in:\n{result.stdout}")
    assert str(populated["tokens"]["acct-3"]) in result.stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z", result.stdout)
    instances_table = invoke("instances", SVC, "--redis", redis_url, "-n", namespace, env={"COLUMNS": "80"})
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z", instances_table.stdout)) == 4


def test_flags_do_not_look_like_they_take_a_value() -> None:
    for command in ("owner", "resources", "instances", "events", "serve"):
        helped = invoke(command, "--help", env={"COLUMNS": "100"})
        flag_lines = [line for line in helped.stdout.splitlines() if re.search(r"--(json|follow|embedded)\b", line)]
        assert flag_lines, command
        for line in flag_lines:
            assert "<bool>" not in line and "BOOLEAN" not in line, line


def test_instances_show_the_placement_volunteers(redis_url: str, namespace: str) -> None:
    async def setup() -> None:
        async with ResourceRegistry(redis_url, namespace=namespace) as reg:
            await reg.register_instance(SVC, "plain-1", ttl=60)
            await reg.register_instance(SVC, "vol-1", ttl=60)
            await reg.add_volunteer(SVC, "vol-1", placement="least_loaded", limit=500)

    asyncio.run(setup())
    rows = json.loads(invoke("instances", SVC, "--redis", redis_url, "-n", namespace, "--json").stdout)
    assert [(r["instance_id"], r["volunteer"]) for r in rows] == [
        ("plain-1", None),
        ("vol-1", {"placement": "least_loaded", "limit": 500}),
    ]
    table = invoke("instances", SVC, "--redis", redis_url, "-n", namespace, env={"COLUMNS": "160"}).stdout
    assert "placement" in table
    assert next(line for line in table.splitlines() if "vol-1" in line).count("least_loaded") == 1
    assert " - " in next(line for line in table.splitlines() if "plain-1" in line)
