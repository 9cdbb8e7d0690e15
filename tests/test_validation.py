"""Bad input: a clear InvalidRequestError (400) naming the field, and nothing stored or changed."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resource_router import InvalidRequestError, ResourceRegistry, RouterSettings
from resource_router.errors import error_from_dict
from resource_router.ids import validate_resource_id
from tests.support.keyspace import keyspace

SVC = "docs"


BAD_RESOURCE_IDS = [
    "",
    " ",
    "a b",
    "tab\there",
    "new\nline",
    "{tag}",
    "a}",
    "glob*",
    "q?",
    "[x]",
    'quo"te',
    "back\\slash",
    "nul\x00",
    "\u200b",
    "x" * 257,
    "\ud800",
]


@pytest.mark.parametrize("bad", BAD_RESOURCE_IDS)
async def test_bad_resource_ids_are_rejected_before_redis(registry: ResourceRegistry, namespace: str, bad: str) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_resource(SVC, "i1", ["keep"])
    before = await keyspace(registry.redis, namespace)
    for call in (
        registry.register_resource(SVC, "i1", ["ok-1", bad]),
        registry.release_resource(SVC, "i1", ["keep", bad]),
        registry.get_resource_owner(SVC, bad),
    ):
        with pytest.raises(InvalidRequestError) as err:
            await call
        assert err.value.code == 400 and err.value.field in ("resource_ids", "resource_id")
    assert await keyspace(registry.redis, namespace) == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"service_name": "bad name"}, "service_name"),
        ({"service_name": "{x}"}, "service_name"),
        ({"service_name": ""}, "service_name"),
        ({"service_name": "s" * 129}, "service_name"),
        ({"instance_id": "bad|id"}, "instance_id"),
        ({"instance_id": "white space"}, "instance_id"),
        ({"instance_id": 42}, "instance_id"),
        ({"resource_ids": []}, "resource_ids"),
        ({"resource_ids": 7}, "resource_ids"),
        ({"resource_ids": [1, 2]}, "resource_ids"),
        ({"metadata": "not a dict"}, "metadata"),
        ({"metadata": {"x": object()}}, "metadata"),
        ({"metadata": {"big": "x" * 5000}}, "metadata"),
        ({"metadata": {"nan": float("nan")}}, "metadata"),
        ({"metadata": {"k": "\ud800"}}, "metadata"),
        ({"metadata": {"\udfff": 1}}, "metadata"),
        ({"trace_id": "t-\ud800"}, "trace_id"),
    ],
)
async def test_bad_registration_arguments_name_the_field(
    registry: ResourceRegistry, namespace: str, kwargs: dict[str, Any], field: str
) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    before = await keyspace(registry.redis, namespace)
    args: dict[str, Any] = {"service_name": SVC, "instance_id": "i1", "resource_ids": ["a"]} | kwargs
    with pytest.raises(InvalidRequestError) as err:
        await registry.register_resource(
            args.pop("service_name"), args.pop("instance_id"), args.pop("resource_ids"), **args
        )
    assert err.value.field == field
    assert err.value.to_dict()["field"] == field
    assert await keyspace(registry.redis, namespace) == before


async def test_lone_surrogates_name_the_field_wherever_text_reaches_redis(
    registry: ResourceRegistry, namespace: str
) -> None:
    """Text that cannot be encoded as UTF-8 is refused with 400 naming the field, never UnicodeEncodeError."""
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_resource(SVC, "i1", ["a"])
    before = await keyspace(registry.redis, namespace)
    calls = {
        "trace_id": registry.release_resource(SVC, "i1", ["a"], trace_id="\ud800"),
        "metadata": registry.register_instance(SVC, "i2", ttl=5, metadata={"zone": "\ud83d"}),
    }
    for field, call in calls.items():
        with pytest.raises(InvalidRequestError) as err:
            await call
        assert (err.value.code, err.value.field) == (400, field)
        assert "lone surrogate" in err.value.message
    assert await keyspace(registry.redis, namespace) == before


@pytest.mark.parametrize("ttl", [0, -1, 0.001, 10**6, float("nan"), "5", True])
async def test_bad_ttl(registry: ResourceRegistry, ttl: Any) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await registry.register_instance(SVC, "i1", ttl=ttl)
    assert err.value.field == "ttl"
    assert await registry.list_instances(SVC) == []


async def test_batch_size_limit(backend_url: str, namespace: str) -> None:
    reg = ResourceRegistry(backend_url, namespace=namespace, settings=RouterSettings(max_batch_size=10))
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        with pytest.raises(InvalidRequestError) as err:
            await reg.register_resource(SVC, "i1", [f"r{i}" for i in range(11)])
        assert err.value.field == "resource_ids" and "limit is 10" in err.value.message


def test_bad_namespace_and_settings() -> None:
    with pytest.raises(InvalidRequestError) as err:
        ResourceRegistry("memory://", namespace="has space")
    assert err.value.field == "namespace"
    with pytest.raises(InvalidRequestError) as err:
        ResourceRegistry("memory://", max_resources_per_instance=0)
    assert err.value.field == "max_resources_per_instance"
    with pytest.raises(InvalidRequestError) as err:
        ResourceRegistry("http://localhost:6379")
    assert err.value.field == "redis"


def test_errors_round_trip_through_their_dict_form() -> None:
    with pytest.raises(InvalidRequestError) as err:
        validate_resource_id("a b")
    again = error_from_dict(err.value.to_dict())
    assert type(again) is InvalidRequestError and again.field == "resource_id"
    assert again.message == err.value.message
    unknown = error_from_dict({"type": "SomethingElse", "message": "m"})
    assert type(unknown).__name__ == "ResourceRouterError" and unknown.message == "m"
    broken = error_from_dict({"type": "ResourceReleaseError", "message": "m", "owners": None})
    assert type(broken).__name__ == "ResourceRouterError"


# Any text: either rejected with 400 before Redis, or stored and returned exactly.
hostile_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=None),
    min_size=0,
    max_size=300,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rid=st.one_of(hostile_text, st.sampled_from(["user:1", "ü-ñ", "日本", "a|b", "x" * 256, "emoji-😀"])))
async def test_hostile_ids_are_rejected_or_round_trip_exactly(
    real_registry: ResourceRegistry, raw_redis: aredis.Redis, namespace: str, rid: str
) -> None:
    reg = real_registry
    await reg.register_instance(SVC, "i1", ttl=30)
    before = await keyspace(raw_redis, namespace)
    try:
        resp = await reg.register_resource(SVC, "i1", [rid], metadata={"id": rid[:50]})
    except InvalidRequestError as exc:
        assert exc.code == 400 and exc.field == "resource_ids"
        assert await keyspace(raw_redis, namespace) == before
        return
    assert resp.registered == [rid]
    owner = await reg.get_resource_owner(SVC, rid)
    assert owner.resource_id == rid and owner.owner_instance_id == "i1"
    assert owner.metadata == {"id": rid[:50]}
    assert [r.resource_id for r in await reg.list_resources(SVC, "i1")] == [rid]
    events = await reg.events.recent(SVC, 1)
    assert events[0].resource_ids == [rid]
    assert (await reg.release_resource(SVC, "i1", [rid])).released == [rid]
    assert await reg.deregister_instance(SVC, "i1") == []
