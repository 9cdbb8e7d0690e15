"""Settings of one router replica (``resource-router serve``), read from the environment by pydantic-settings.

Every field can be set with a ``RESOURCE_ROUTER_<FIELD>`` variable or ``.env`` line
(``RESOURCE_ROUTER_PORT=8001``); the Redis URL, namespace and library knobs come from
:class:`~resource_router.RouterSettings` (``RESOURCE_ROUTER_REDIS_URL``, ``RESOURCE_ROUTER_NAMESPACE``,
...). Explicit arguments (the CLI's options) win over the environment.

A replica needs a real Redis: it refuses the embedded ``memory://`` store (a private in-process store
that no other replica or instance can see) unless ``embedded`` (``--embedded``) allows it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from resource_router.settings import (
    DEFAULT_CONSOLE_KEEPALIVE_SECONDS,
    DEFAULT_CONSOLE_STREAM_SECONDS,
    ENV_PREFIX,
    ENV_REDIS_URL,
    RouterSettings,
    SettingsBase,
)
from resource_router.transport.memory import is_memory_url

__all__ = ["DEFAULT_MAX_BODY_BYTES", "GatewaySettings", "LogFormat"]

DEFAULT_MAX_BODY_BYTES = 1_048_576

LogFormat = Literal["json", "console"]

# NATS subject tokens: no spaces, no wildcards, no empty token.
_SUBJECT_TOKENS = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


class GatewaySettings(SettingsBase):
    """Knobs of one stateless router replica. Nothing here is shared state: that all lives in Redis."""

    router: RouterSettings = Field(default_factory=RouterSettings)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Largest request body accepted; larger ones get 413 before the body is read.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    log_format: LogFormat = "json"
    log_level: str = "info"
    #: Seconds between sweeps for dead instances; 0 turns the replica's sweeper off.
    sweep_interval: float = Field(default=1.0, ge=0)
    #: Seconds uvicorn waits for in-flight requests after SIGTERM before closing them.
    shutdown_timeout: float = Field(default=30.0, ge=0)
    #: Seconds ``/readyz`` waits for Redis to answer PING.
    ready_timeout: float = Field(default=2.0, gt=0)
    #: Replica processes sharing the port (``--workers``); each is a whole replica, as stateless as one.
    workers: int = Field(default=1, ge=1, le=64)
    #: Requests (HTTP and NATS) one process serves at once; above it the answer is 503 with ``Retry-After``.
    #: Probes (``/healthz``, ``/readyz``) and ``/metrics`` are always answered.
    max_in_flight: int = Field(default=1024, ge=1, le=1_000_000)
    #: A NATS server to also answer the seed's subjects on (``--nats``); None: HTTP only.
    nats_url: str | None = None
    #: Subjects are ``<prefix>.resource.register``, ``<prefix>.resource.release``,
    #: ``<prefix>.resource.query`` and ``<prefix>.route``.
    nats_subject_prefix: str = Field(default="ipc", pattern=_SUBJECT_TOKENS)
    #: The queue group every replica joins, so that each NATS request is answered by one replica.
    nats_queue: str = Field(default="resource-router", pattern=_SUBJECT_TOKENS)
    #: The operator console (``/console``): seconds one live-feed stream stays open before the browser
    #: reconnects and resumes, and seconds between its keep-alive comments.
    console_stream_seconds: float = Field(default=DEFAULT_CONSOLE_STREAM_SECONDS, gt=0, le=3600)
    console_keepalive_seconds: float = Field(default=DEFAULT_CONSOLE_KEEPALIVE_SECONDS, gt=0, le=300)
    #: Allow the embedded memory:// store (one process only: for trying the replica out).
    embedded: bool = False

    @model_validator(mode="after")
    def _needs_a_redis_url(self) -> GatewaySettings:
        if self.embedded or not is_memory_url(self.redis_url):
            return self
        if "redis_url" not in self.router.model_fields_set:
            raise ValueError(
                f"a replica needs a Redis URL: pass --redis URL or set {ENV_REDIS_URL}; "
                f"--embedded ({ENV_PREFIX}EMBEDDED=1) serves a private in-process memory:// store instead"
            )
        raise ValueError(
            f"{self.router.redis_url} is the embedded in-process store, which no other replica or instance "
            f"can see: pass --embedded ({ENV_PREFIX}EMBEDDED=1) to serve it anyway, or a redis:// URL"
        )

    @property
    def redis_url(self) -> str:
        return self.router.redis_url.get_secret_value()

    @property
    def namespace(self) -> str:
        return self.router.namespace

    @classmethod
    def from_env(cls, **overrides: Any) -> GatewaySettings:
        """The environment (and ``.env``) with ``overrides`` on top. Overrides named like
        ``RouterSettings`` fields (``redis_url``, ``namespace``, ...) go to ``router``; ``None``
        overrides (options not given) are ignored."""
        given = {k: v for k, v in overrides.items() if v is not None}
        router = {k: given.pop(k) for k in list(given) if k in RouterSettings.model_fields}
        return cls(router=RouterSettings(**router), **given)
