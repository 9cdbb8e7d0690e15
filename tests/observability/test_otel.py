"""OpenTelemetry: spans recorded with the SDK's in-memory exporter, in interpreters of their own (a
tracer provider can be set once per process, so the rest of the suite stays untraced)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.support.processes import clean_env

SETUP = """
import asyncio, json, logging, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

def spans():
    out = []
    for s in exporter.get_finished_spans():
        out.append({
            "name": s.name,
            "kind": s.kind.name,
            "trace_id": f"{s.context.trace_id:032x}",
            "span_id": f"{s.context.span_id:016x}",
            "parent": None if s.parent is None else f"{s.parent.span_id:016x}",
            "parent_trace": None if s.parent is None else f"{s.parent.trace_id:032x}",
            "attributes": dict(s.attributes or {}),
        })
    return out
"""


def run(tmp_path: Path, body: str) -> Any:
    script = tmp_path / "traced.py"
    script.write_text(SETUP + textwrap.dedent(body))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=clean_env())
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_routed_call_is_one_trace_of_a_call_and_a_handle_span(tmp_path: Path, redis_url: str, namespace: str) -> None:
    got = run(
        tmp_path,
        f"""
        from resource_router import ServiceClient, ServiceInstance

        async def main():
            async with ServiceInstance({redis_url!r}, "traced", "t-1", namespace={namespace!r}) as inst, \\
                    ServiceClient({redis_url!r}, namespace={namespace!r}) as client:
                inst.add_handler("echo", lambda request: request.params)
                granted = await inst.register_resource(["r-1"])
                exporter.clear()
                assert await client.call("traced", "echo", 7, resource_id="r-1") == 7
                print(json.dumps({{"spans": spans(), "token": granted.fencing_tokens["r-1"]}}))

        asyncio.run(main())
        """,
    )
    by_name = {s["name"]: s for s in got["spans"]}
    call, handle = by_name["call"], by_name["handle"]
    assert (call["kind"], handle["kind"]) == ("PRODUCER", "CONSUMER")
    assert handle["trace_id"] == call["trace_id"]
    assert handle["parent"] == call["span_id"] and handle["parent_trace"] == call["trace_id"]
    for span in (call, handle):
        attrs = span["attributes"]
        assert attrs["messaging.system"] == "redis"
        assert attrs["service_name"] == "traced" and attrs["resource_id"] == "r-1"
        assert attrs["messaging.destination.name"] == f"{namespace}:rpc:traced:t-1"
    assert call["attributes"]["instance_id"] == "t-1" == handle["attributes"]["instance_id"]
    assert call["attributes"]["fencing_token"] == got["token"] == handle["attributes"]["fencing_token"]
    assert call["attributes"]["messaging.operation.type"] == "send"
    assert handle["attributes"]["messaging.operation.type"] == "process"
    assert handle["attributes"]["messaging.message.id"] == call["attributes"]["messaging.message.id"]


def test_registry_operations_are_spans_and_logs_name_the_trace(tmp_path: Path, redis_url: str, namespace: str) -> None:
    got = run(
        tmp_path,
        f"""
        from resource_router import ResourceRegistry

        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(getattr(record, "fields", {{}}))
        logging.getLogger("resource_router").addHandler(Keep())
        logging.getLogger("resource_router").setLevel(logging.INFO)

        async def main():
            async with ResourceRegistry({redis_url!r}, namespace={namespace!r}) as reg:
                await reg.register_instance("traced", "i-1", ttl=30)
                await reg.register_resource("traced", "i-1", ["a"])
                await reg.get_resource_owner("traced", "a")
                print(json.dumps({{"spans": spans(), "logs": records}}))

        asyncio.run(main())
        """,
    )
    names = [s["name"] for s in got["spans"]]
    assert names == [
        "resource_router.register_instance",
        "resource_router.register_resource",
        "resource_router.lookup",
    ]
    assert all(s["kind"] == "INTERNAL" for s in got["spans"])
    trace_of = {s["name"]: s["trace_id"] for s in got["spans"]}
    registered = [f for f in got["logs"] if "registered" in f and "conflicts" in f]
    assert registered and registered[0]["otel_trace_id"] == trace_of["resource_router.register_resource"]


def test_a_replica_continues_the_callers_traceparent(tmp_path: Path, redis_url: str, namespace: str) -> None:
    caller_trace = "0af7651916cd43dd8448eb211c80319c"
    caller_span = "b7ad6b7169203331"
    got = run(
        tmp_path,
        f"""
        import httpx
        from resource_router import ServiceInstance
        from resource_router import RouterSettings
        from resource_router.gateway import GatewaySettings, create_app

        async def main():
            router = RouterSettings(redis_url={redis_url!r}, namespace={namespace!r})
            settings = GatewaySettings(router=router, sweep_interval=0)
            app = create_app(settings)
            async with ServiceInstance({redis_url!r}, "traced", "t-1", namespace={namespace!r}) as inst:
                inst.add_handler("echo", lambda request: request.params)
                await inst.register_resource(["r-1"])
                async with app.router.lifespan_context(app):
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as http:
                        exporter.clear()
                        answer = await http.post(
                            "/v1/route",
                            json={{"service_name": "traced", "method": "echo", "resource_id": "r-1", "params": 1}},
                            headers={{"traceparent": "00-{caller_trace}-{caller_span}-01"}},
                        )
                print(json.dumps({{"status": answer.status_code, "traceparent": answer.headers.get("traceparent"),
                                   "spans": spans()}}))

        asyncio.run(main())
        """,
    )
    assert got["status"] == 200
    spans = {s["name"]: s for s in got["spans"]}
    server, call, handle = spans["POST /v1/route"], spans["call"], spans["handle"]
    assert server["kind"] == "SERVER"
    assert {server["trace_id"], call["trace_id"], handle["trace_id"]} == {caller_trace}
    assert server["parent"] == caller_span  # the caller's span, from the header
    assert call["parent"] == server["span_id"] and handle["parent"] == call["span_id"]
    assert got["traceparent"] == f"00-{caller_trace}-{server['span_id']}-01"


def test_without_the_extra_nothing_is_imported(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys

            class NoOtel:  # as if opentelemetry-api were not installed
                def find_spec(self, name, path=None, target=None):
                    if name == "opentelemetry" or name.startswith("opentelemetry."):
                        raise ModuleNotFoundError(name)
                    return None
            sys.meta_path.insert(0, NoOtel())

            from resource_router import ServiceClient, ServiceInstance
            from resource_router.observability import otel

            async def main():
                url = "memory://no-otel"
                async with ServiceInstance(url, "plain", "p-1") as inst, ServiceClient(url) as client:
                    inst.add_handler("echo", lambda request: request.params)
                    await inst.register_resource(["r"])
                    assert await client.call("plain", "echo", 3, resource_id="r") == 3
                print(otel.enabled(), [m for m in sys.modules if m.startswith("opentelemetry")])

            asyncio.run(main())
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False []"
