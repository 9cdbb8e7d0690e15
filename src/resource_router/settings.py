"""Settings: one class per face, every default in one place, read from the environment by pydantic-settings.

* :class:`RouterSettings`: the library's knobs (registries, instances, clients; the CLI reads them too).
* ``GatewaySettings`` (``resource_router.gateway.replica_settings``): one router replica; it embeds these.

Each field can be set with a ``RESOURCE_ROUTER_<FIELD>`` environment variable or the same line in a
``.env`` file of the working directory. Explicit arguments win over the environment, which wins over
``.env``, which wins over the defaults. Nothing is read at import: only when a settings object is
built (``RouterSettings()``, which the library does when it is given no settings).

Secrets never show in logs, reprs or JSON dumps: the Redis URL (which may hold a password) is a
:class:`RedisUrl`, printed as ``redis://***@host:6379/0``; signing keys are ``SecretStr``.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_serializer, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from resource_router.errors import InvalidRequestError

__all__ = [
    "DEFAULT_CONFIRM_AFTER",
    "DEFAULT_CONFIRM_BATCH",
    "DEFAULT_CONSOLE_KEEPALIVE_SECONDS",
    "DEFAULT_CONSOLE_RECENT_EVENTS",
    "DEFAULT_CONSOLE_SHUTDOWN_TIMEOUT",
    "DEFAULT_CONSOLE_STREAM_SECONDS",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_RESOURCES_PER_INSTANCE",
    "DEFAULT_MAX_STATE_BYTES",
    "DEFAULT_NAMESPACE",
    "DEFAULT_OWNER_CACHE_TTL",
    "DEFAULT_REBALANCE_RATE",
    "DEFAULT_REDIS_URL",
    "DEFAULT_STATE_TABLE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TTL",
    "ENV_FILE",
    "ENV_PREFIX",
    "ENV_REDIS_URL",
    "MAX_CALL_TIMEOUT",
    "MAX_TTL",
    "MIN_TTL",
    "RedisUrl",
    "RouterSettings",
    "SettingsBase",
    "redact_url",
    "validate_seconds",
]

# -- every default of the package ---------------------------------------------------------------
ENV_PREFIX = "RESOURCE_ROUTER_"
ENV_FILE = ".env"
ENV_REDIS_URL = f"{ENV_PREFIX}REDIS_URL"
#: The embedded in-process store (the ``memory`` extra); never chosen when a real URL was given.
DEFAULT_REDIS_URL = "memory://"
#: Key prefix, so several deployments can share one Redis.
DEFAULT_NAMESPACE = "rr"
#: Resources one instance may own.
DEFAULT_MAX_RESOURCES_PER_INSTANCE = 1000
#: An instance's lease in seconds (heartbeats every third of it), and the bounds it must stay in.
DEFAULT_TTL = 10.0
MIN_TTL = 0.05
MAX_TTL = 86_400.0
#: Seconds: a routed call's reply, one Redis operation, connecting, an instance's drain on stop.
DEFAULT_TIMEOUT = 5.0
#: The longest timeout a routed call may ask for (seconds).
MAX_CALL_TIMEOUT = 3600.0
#: A caller's owner cache: the backstop TTL of an entry (ownership events drop entries long before).
DEFAULT_OWNER_CACHE_TTL = 5.0
#: Handlers one instance runs at once.
DEFAULT_MAX_CONCURRENCY = 256
#: Seconds a request may have waited (since its caller sent it, or inside the instance) before its
#: ownership is confirmed in Redis rather than taken from the instance's own view.
DEFAULT_CONFIRM_AFTER = 0.1
#: Ids one confirmation read asks Redis about.
DEFAULT_CONFIRM_BATCH = 5000
#: Resources per second a rebalancing volunteer hands to a newcomer.
DEFAULT_REBALANCE_RATE = 100.0
#: The operator console's live feed: seconds one event stream stays open (the browser reconnects at
#: once and resumes after the last event it saw, so a replica's shutdown never waits long for it), and
#: seconds between keep-alive comments while no event comes.
DEFAULT_CONSOLE_STREAM_SECONDS = 15.0
DEFAULT_CONSOLE_KEEPALIVE_SECONDS = 5.0
#: Seconds ``resource-router console`` lets open requests (its live feeds) finish when it is stopped.
DEFAULT_CONSOLE_SHUTDOWN_TIMEOUT = 1.0
#: Events the console's feed shows first (the most recent ones) when it opens.
DEFAULT_CONSOLE_RECENT_EVENTS = 20
#: Largest encoded state of one resource (bytes): 1 MiB.
DEFAULT_MAX_STATE_BYTES = 1_048_576
#: The table of ``PostgresStateStore``.
DEFAULT_STATE_TABLE = "resource_state"


def validate_seconds(
    value: object, field: str, *, low: float, high: float = float("inf"), low_open: bool = False
) -> float:
    """A duration in seconds within ``[low, high]`` (``(low, high]`` with ``low_open``), as a float;
    ``InvalidRequestError`` naming ``field`` otherwise (booleans are not numbers here). The one check
    of every duration the library takes (ttls, timeouts, intervals)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (low < value if low_open else low <= value)
        or not value <= high
    ):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise InvalidRequestError(f"{field} must be a number of seconds in {bounds}", field=field)
    return float(value)


def redact_url(url: str) -> str:
    """``url`` without its password (``redis://user:***@host:6379/0``); the one place that masks URLs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return url.replace(parts.netloc, f"{user}:***@{host}" if user else f"***@{host}", 1)


class RedisUrl(SecretStr):
    """A Redis URL whose password never shows: ``str()`` and ``repr()`` give it masked."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


class _OwnFieldsOnly(PydanticBaseSettingsSource):
    """The ``.env`` source, keeping only this class's fields: one ``.env`` serves every face
    (``RESOURCE_ROUTER_PORT`` is the replica's, not the library's) while typos in arguments still fail."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._inner().items() if k in self.settings_cls.model_fields}


class SettingsBase(BaseSettings):
    """What every settings class of the package shares: the prefix, ``.env``, frozen, no unknown fields."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # RESOURCE_ROUTER_PORT= (as compose files write it) means "not set"
        frozen=True,
        extra="forbid",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _OwnFieldsOnly(settings_cls, dotenv_settings), file_secret_settings


class RouterSettings(SettingsBase):
    """Knobs shared by the registry, instances, clients, the CLI and the gateway.

    ``RouterSettings()`` reads ``RESOURCE_ROUTER_*`` variables (and ``.env``); keyword arguments win.
    """

    redis_url: RedisUrl = RedisUrl(DEFAULT_REDIS_URL)
    namespace: str = DEFAULT_NAMESPACE
    max_resources_per_instance: int = Field(default=DEFAULT_MAX_RESOURCES_PER_INSTANCE, ge=1, le=1_000_000)
    #: Largest number of ids one register/release call accepts (one Lua step each).
    max_batch_size: int = Field(default=10_000, ge=1, le=100_000)
    #: None (the default): every register_resource call is one atomic step, however many ids.
    #: A number: batches larger than it run as several atomic steps of that many ids, so that a
    #: large registration never holds Redis for long (other clients' commands wait behind a Lua
    #: script). See ``ResourceRegistry._register_chunked`` for what stays guaranteed.
    register_chunk_size: int | None = Field(default=None, ge=1, le=100_000)
    #: Approximate bound of the audit stream (XADD MAXLEN ~).
    audit_maxlen: int = Field(default=10_000, ge=100)
    #: Bound on one Redis operation (each attempt) of the registry; a paused or partitioned Redis
    #: surfaces as RedisUnavailableError instead of hanging.
    operation_timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=300)
    #: Attempts for idempotent operations when Redis is unreachable (1 = no retry).
    retry_attempts: int = Field(default=3, ge=1, le=20)
    retry_initial_backoff: float = Field(default=0.05, gt=0)
    retry_max_backoff: float = Field(default=1.0, gt=0)
    #: Connections of one client made by the library (single Redis: a blocking pool, callers wait
    #: for a free connection within their deadline; Redis Cluster: per node).
    max_connections: int = Field(default=128, ge=1, le=100_000)
    #: Bound on opening one connection to Redis (TCP connect and TLS handshake).
    connect_timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=300)
    #: TCP keepalive probes start after this many seconds of silence on a connection.
    keepalive_idle: float = Field(default=5.0, ge=1, le=7200)
    #: The pub/sub connections of a process send PING after this many seconds without traffic...
    health_check_interval: float = Field(default=1.0, gt=0, le=300)
    #: ...and are declared dead (then reconnected and re-subscribed) when no reply comes within this
    #: many seconds; a command waiting that long for its reply ends its connection the same way.
    #: A half-open connection is thus noticed within ``health_check_interval + health_check_timeout``.
    health_check_timeout: float = Field(default=2.0, gt=0, le=300)
    #: Largest msgpack request or reply payload in bytes.
    max_payload_bytes: int = Field(default=1_048_576, ge=1024)
    #: Largest encoded (msgpack) state of one resource in bytes; larger saves are refused (413).
    max_state_bytes: int = Field(default=DEFAULT_MAX_STATE_BYTES, ge=64, le=512 * 1_048_576)
    #: Largest resource metadata (JSON bytes) stored per grant.
    max_metadata_bytes: int = Field(default=4096, ge=64)
    #: Keys that authenticate envelopes (env: comma-separated); the first signs, all verify. Each at
    #: least 16 bytes (use 32 random bytes: ``openssl rand -base64 32``). See docs/security.md.
    signing_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: Seconds a signed envelope stays acceptable after (and before) its timestamp: clocks of callers
    #: and instances must agree within it; instances remember the envelopes they saw for twice as long.
    signing_window: float = Field(default=10.0, gt=0, le=3600)
    #: Only while turning signing on (or off) across running processes: seal what is sent but also
    #: accept envelopes that carry no seal at all (forged, stale and replayed ones are still refused).
    signing_accept_unsigned: bool = False
    #: Partitions of a service's ownership (recorded per service in Redis).
    partitions: int = Field(default=1, ge=1, le=1024)
    #: Replicas that must acknowledge every write that grants, renews, releases or takes over
    #: ownership (``WAIT``) before it is reported done; 0: reported once the master applied it.
    #: README "High availability" says what each choice guarantees.
    min_replicas: int = Field(default=0, ge=0, le=16)
    #: Seconds a write waits for ``min_replicas`` acknowledgements; fewer by then: ``DurabilityError``.
    replica_timeout: float = Field(default=1.0, gt=0, le=60)

    @field_validator("signing_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("signing_keys")
    @classmethod
    def _long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(key.get_secret_value().encode()) < 16 for key in value):
            raise ValueError("every signing key must be at least 16 bytes long (use 32 random bytes)")
        return value

    @field_serializer("redis_url", when_used="json")
    def _masked_url(self, value: RedisUrl) -> str:
        return str(value)

    @property
    def redis_url_given(self) -> bool:
        """True when the URL came from an argument, the environment or ``.env`` (not the default)."""
        return "redis_url" in self.model_fields_set

    @classmethod
    def from_env(cls, **overrides: Any) -> RouterSettings:
        """The environment (and ``.env``) with ``overrides`` on top; ``None`` overrides are ignored
        (an option that was not given)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})
