"""Settings: pydantic-settings classes per face, the environment and .env, secrets, one home per default."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from resource_router import ResourceRegistry, RouterSettings, ServiceClient, ServiceInstance
from resource_router import settings as defaults
from resource_router.gateway import GatewaySettings
from resource_router.settings import RedisUrl, redact_url


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RESOURCE_ROUTER_* variables and no .env from the developer's shell."""
    import os

    for name in [n for n in os.environ if n.startswith("RESOURCE_ROUTER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_arguments_beat_the_environment_which_beats_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "RESOURCE_ROUTER_NAMESPACE=from-dotenv\n"
        "RESOURCE_ROUTER_OPERATION_TIMEOUT=7\n"
        "RESOURCE_ROUTER_RETRY_ATTEMPTS=5\n"
        "RESOURCE_ROUTER_PORT=8123\n"  # the replica's: ignored by the library's settings
        "UNRELATED=1\n"
    )
    monkeypatch.setenv("RESOURCE_ROUTER_OPERATION_TIMEOUT", "9")
    s = RouterSettings(retry_attempts=2)
    assert (s.namespace, s.operation_timeout, s.retry_attempts) == ("from-dotenv", 9.0, 2)
    assert GatewaySettings(embedded=True).port == 8123
    assert GatewaySettings(embedded=True).namespace == "from-dotenv"


async def test_entry_objects_take_namespace_limit_and_partitions_from_settings_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESOURCE_ROUTER_NAMESPACE", "from-env")
    from_env = ResourceRegistry("memory://settings-env")
    explicit = RouterSettings(namespace="team-a", max_resources_per_instance=5000, partitions=4)
    from_settings = ResourceRegistry("memory://settings-explicit", settings=explicit)
    given = ResourceRegistry(
        "memory://settings-given", namespace="team-b", max_resources_per_instance=7, partitions=2, settings=explicit
    )
    instance = ServiceInstance("memory://settings-instance", "svc", "i1", settings=explicit)
    client = ServiceClient("memory://settings-client", settings=explicit)
    try:
        assert from_env.namespace == "from-env" and from_env.settings.max_resources_per_instance == 1000
        assert (from_settings.namespace, from_settings.settings.max_resources_per_instance) == ("team-a", 5000)
        assert from_settings.settings.partitions == 4
        assert (given.namespace, given.settings.max_resources_per_instance, given.settings.partitions) == (
            "team-b",
            7,
            2,
        )
        assert instance.namespace == client.namespace == "team-a"
    finally:
        await instance.stop()
        for entry in (from_env, from_settings, given, client):
            await entry.aclose()


def test_unknown_arguments_and_bad_values_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="namespce"):
        RouterSettings(namespce="x")  # type: ignore[call-arg]
    monkeypatch.setenv("RESOURCE_ROUTER_RETRY_ATTEMPTS", "many")
    with pytest.raises(ValidationError, match="retry_attempts"):
        RouterSettings()
    monkeypatch.setenv("RESOURCE_ROUTER_RETRY_ATTEMPTS", "")  # empty means unset (compose files write VAR=)
    assert RouterSettings().retry_attempts == 3


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESOURCE_ROUTER_REDIS_URL", "redis://app:hunter2@db.internal:6380/3")
    monkeypatch.setenv("RESOURCE_ROUTER_SIGNING_KEYS", "key-one-secret-2026, key-two-secret-2025")
    s = RouterSettings()
    assert isinstance(s.redis_url, RedisUrl)
    assert s.redis_url.get_secret_value() == "redis://app:hunter2@db.internal:6380/3"
    assert [k.get_secret_value() for k in s.signing_keys] == ["key-one-secret-2026", "key-two-secret-2025"]
    gateway = GatewaySettings()
    assert gateway.redis_url == "redis://app:hunter2@db.internal:6380/3"
    for text in (repr(s), str(s), s.model_dump_json(), repr(gateway), gateway.model_dump_json()):
        assert "hunter2" not in text and "key-one" not in text and "key-two" not in text, text
    assert "redis://app:***@db.internal:6380/3" in repr(s)
    assert json.loads(s.model_dump_json())["redis_url"] == "redis://app:***@db.internal:6380/3"


def test_fields_for_the_transport_are_defined() -> None:
    s = RouterSettings()
    assert (s.signing_keys, s.partitions) == ([], 1)
    with pytest.raises(ValidationError):
        RouterSettings(partitions=0)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("rediss://user:pw@host/1", "rediss://user:***@host/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("memory://demo", "memory://demo"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert str(RedisUrl(url)) == shown


def test_a_replica_needs_a_redis_url_unless_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="a replica needs a Redis URL: pass --redis URL or set"):
        GatewaySettings()
    with pytest.raises(ValidationError, match="is the embedded in-process store"):
        GatewaySettings(router=RouterSettings(redis_url="memory://x"))
    assert GatewaySettings(embedded=True).redis_url == "memory://"
    monkeypatch.setenv("RESOURCE_ROUTER_EMBEDDED", "1")
    assert GatewaySettings().embedded is True
    monkeypatch.delenv("RESOURCE_ROUTER_EMBEDDED")
    monkeypatch.setenv("RESOURCE_ROUTER_REDIS_URL", "redis://example:6379/0")
    assert GatewaySettings().redis_url == "redis://example:6379/0"
    assert GatewaySettings.from_env(port=None, namespace="blue", host="0.0.0.0").namespace == "blue"


def test_every_default_has_one_home() -> None:
    """The entry objects' signatures take their defaults from the settings module."""
    expected = {
        "namespace": None,  # None: RouterSettings decides (the argument, the environment, its default)
        "max_resources_per_instance": None,
        "partitions": None,
        "ttl": defaults.DEFAULT_TTL,
        "timeout": defaults.DEFAULT_TIMEOUT,
        "drain_timeout": defaults.DEFAULT_TIMEOUT,
    }
    seen = 0
    for fn in (ResourceRegistry.__init__, ServiceInstance.__init__, ServiceClient.__init__, ServiceClient.call):
        for name, param in inspect.signature(fn).parameters.items():
            if name in expected:
                assert param.default == expected[name], (fn.__qualname__, name)
                seen += 1
    assert seen >= 10
    s = RouterSettings()
    assert (s.namespace, s.max_resources_per_instance, s.operation_timeout) == (
        defaults.DEFAULT_NAMESPACE,
        defaults.DEFAULT_MAX_RESOURCES_PER_INSTANCE,
        defaults.DEFAULT_TIMEOUT,
    )
