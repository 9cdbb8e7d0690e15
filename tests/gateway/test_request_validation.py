"""What a replica tells callers about bad input, and what its schema promises: text that is not
Unicode, fields callers must not send, the methods a path accepts, and the id rules in OpenAPI."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_router import InvalidRequestError
from resource_router.ids import (
    INSTANCE_ID_SCHEMA,
    RESOURCE_ID_SCHEMA,
    SERVICE_NAME_SCHEMA,
    validate_instance_id,
    validate_resource_id,
    validate_service_name,
)
from tests.support.gateway import SVC, Gateway, assert_error
from tests.support.keyspace import keyspace


def _post(gw: Gateway, path: str, raw_json: str, trace_id: str) -> Any:
    """POST a JSON text as written (``\\ud800`` escapes reach the server as they are)."""
    return gw.http.post(
        path, content=raw_json.encode(), headers={"content-type": "application/json", "X-Trace-Id": trace_id}
    )


@pytest.mark.parametrize(
    "metadata", ['{"k": "\\ud800"}', '{"\\udfff": 1}', '{"deep": [{"x": "a\\ud83d"}]}'], ids=["value", "key", "nested"]
)
async def test_lone_surrogate_in_metadata_is_a_400_naming_the_field(gw: Gateway, namespace: str, metadata: str) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    before = await keyspace(gw.registry.redis, namespace)
    body = f'{{"service_name": "{SVC}", "instance_id": "i1", "resource_ids": ["a"], "metadata": {metadata}}}'
    r = await _post(gw, "/v1/resources/register", body, "t-sur")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["field"]) == ("InvalidRequestError", "metadata")
    assert "lone surrogate" in error["message"]
    assert r.json()["trace_id"] == "t-sur"
    assert await keyspace(gw.registry.redis, namespace) == before


async def test_lone_surrogate_in_a_route_call_names_its_field(gw: Gateway) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)  # live: the call is encoded for it
    method = await _post(gw, "/v1/route", f'{{"service_name": "{SVC}", "method": "m\\ud800"}}', "t-m")
    assert method.status_code == 400
    assert method.json()["error"]["field"] == "method"
    params = await _post(gw, "/v1/route", f'{{"service_name": "{SVC}", "method": "m", "params": ["\\ud800"]}}', "t-p")
    assert params.status_code == 400
    assert params.json()["error"]["field"] == "params"
    # a trace id that is not usable is replaced, never stored or sent on
    traced = await _post(gw, "/v1/route", '{"service_name": "nobody", "method": "m", "trace_id": "\\ud800"}', "t-t")
    assert traced.status_code == 503
    assert traced.json()["trace_id"] == "t-t"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("deadline", "false", "deadline is set by the replica from timeout; send timeout (seconds) instead"),
        ("deadline", "1", "deadline is set by the replica from timeout; send timeout (seconds) instead"),
        ("request_id", '"r-1"', "request_id is set by the replica for each call; callers must not send it"),
        (
            "fencing_token",
            "0",
            "fencing_token is set by the owning instance for its handler; callers must not send it",
        ),
    ],
)
async def test_fields_set_by_the_replica_or_the_owner_are_refused(
    gw: Gateway, field: str, value: str, message: str
) -> None:
    """``"deadline": false`` used to be read as 0 and answered 504 before the body was validated."""
    body = f'{{"service_name": "{SVC}", "method": "echo", "resource_id": "user-1", "{field}": {value}}}'
    r = await _post(gw, "/v1/route", body, "t-res")
    assert_error(r, 400, {"type": "InvalidRequestError", "code": 400, "message": message, "field": field}, "t-res")


async def test_options_and_wrong_methods_list_every_method_of_the_path(gw: Gateway) -> None:
    # /v1/resources/register is both the registration (POST) and the resources of a service named
    # "register" (GET)
    options = await gw.http.options("/v1/resources/register", headers={"X-Trace-Id": "t-opt"})
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    assert options.headers["x-trace-id"] == "t-opt"
    assert options.content == b""
    route = await gw.http.options("/v1/route")
    assert (route.status_code, route.headers["allow"]) == (204, "POST, OPTIONS")
    wrong = await gw.http.delete("/v1/resources/register", headers={"X-Trace-Id": "t-del"})
    assert_error(wrong, 405, {"type": "HTTPError", "code": 405, "message": "Method Not Allowed"}, "t-del")
    assert wrong.headers["allow"] == "GET, HEAD, POST"
    unknown = await gw.http.options("/v2/nothing")
    assert unknown.status_code == 404


async def test_openapi_offers_only_what_callers_may_send_and_states_the_id_rules(gw: Gateway) -> None:
    spec = (await gw.http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    route_ref = spec["paths"]["/v1/route"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    route_body = schemas[route_ref.rsplit("/", 1)[1]]
    assert set(route_body["properties"]) == {"service_name", "method", "params", "resource_id", "timeout", "trace_id"}
    assert route_body["required"] == ["service_name", "method"]
    assert route_body["additionalProperties"] is False
    assert route_body["properties"]["service_name"]["pattern"] == SERVICE_NAME_SCHEMA["pattern"]
    assert route_body["properties"]["resource_id"]["anyOf"][0]["pattern"] == RESOURCE_ID_SCHEMA["pattern"]
    for name in ("ResourceRegistrationRequest", "ResourceReleaseRequest"):
        props = schemas[name]["properties"]
        assert props["service_name"]["maxLength"] == 128
        assert props["instance_id"]["pattern"] == INSTANCE_ID_SCHEMA["pattern"]
        assert props["resource_ids"]["items"]["pattern"] == RESOURCE_ID_SCHEMA["pattern"]
        assert props["resource_ids"]["minItems"] == 1
    params = {
        (p["name"], p["in"]): p["schema"]
        for p in spec["paths"]["/v1/resources/{service_name}/{resource_id}"]["get"]["parameters"]
    }
    assert params[("service_name", "path")]["pattern"] == SERVICE_NAME_SCHEMA["pattern"]
    assert params[("resource_id", "path")]["maxLength"] == 256
    listing = spec["paths"]["/v1/resources/{service_name}"]["get"]["parameters"]
    instance = next(p for p in listing if p["name"] == "instance_id")
    assert instance["schema"]["pattern"] == INSTANCE_ID_SCHEMA["pattern"]  # applies to the string case


def _accepted(validate: Any, value: str) -> bool:
    try:
        validate(value)
    except InvalidRequestError:
        return False
    return True


@given(st.text(max_size=40) | st.text(alphabet="ab.-_:@{}* /\\\"'\t", max_size=8))
def test_schema_patterns_agree_with_the_validators(value: str) -> None:
    """An id the library accepts matches the schema; for ASCII ids the two agree exactly (the schema
    cannot name Unicode categories, so beyond ASCII it is the weaker of the two)."""
    for schema, validate in (
        (SERVICE_NAME_SCHEMA, validate_service_name),
        (INSTANCE_ID_SCHEMA, validate_instance_id),
        (RESOURCE_ID_SCHEMA, validate_resource_id),
    ):
        matches = re.fullmatch(schema["pattern"], value) is not None and len(value) <= schema["maxLength"]
        accepted = _accepted(validate, value)
        if accepted:
            assert matches, (schema["pattern"], value)
        if value.isascii():
            assert matches == accepted, (schema["pattern"], value)


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/metrics",
        f"/v1/resources/{SVC}/nobody",
        f"/v1/instances/{SVC}",
        "/docs",
        "/openapi.json",
    ],
)
async def test_head_answers_as_get_without_a_body(gw: Gateway, path: str) -> None:
    get = await gw.http.get(path, headers={"X-Trace-Id": "t-head"})
    head = await gw.http.head(path, headers={"X-Trace-Id": "t-head"})
    assert head.status_code == get.status_code
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the scrape itself changes the next one's length
        assert int(head.headers["content-length"]) == len(get.content)
    if path.startswith("/v1/"):
        assert head.headers["x-trace-id"] == "t-head"


async def test_head_of_a_post_only_path_is_a_405_naming_post(gw: Gateway) -> None:
    head = await gw.http.head("/v1/route")
    assert (head.status_code, head.headers["allow"], head.content) == (405, "POST", b"")


async def test_methods_of_the_schema_and_docs_paths(gw: Gateway) -> None:
    docs = await gw.http.options("/openapi.json")
    assert (docs.status_code, docs.headers["allow"]) == (204, "GET, HEAD, OPTIONS")
    wrong = await gw.http.post("/openapi.json")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET, HEAD")
