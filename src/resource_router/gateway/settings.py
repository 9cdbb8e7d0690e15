"""Settings of one router replica (``resource-router serve``), built from the environment in one place.

Every field can be set with a ``RESOURCE_ROUTER_<FIELD>`` variable (``RESOURCE_ROUTER_PORT=8001``);
the Redis URL, namespace and library knobs come from :class:`~resource_router.RouterSettings`
(``RESOURCE_ROUTER_REDIS_URL``, ``RESOURCE_ROUTER_NAMESPACE``, ...). Explicit overrides (the CLI's
options) win over the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from resource_router.settings import RouterSettings

__all__ = ["DEFAULT_MAX_BODY_BYTES", "GatewaySettings", "LogFormat"]

DEFAULT_MAX_BODY_BYTES = 1_048_576

LogFormat = Literal["json", "console"]

# NATS subject tokens: no spaces, no wildcards, no empty token.
_SUBJECT_TOKENS = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


class GatewaySettings(BaseModel):
    """Knobs of one stateless router replica. Nothing here is shared state: that all lives in Redis."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    @property
    def redis_url(self) -> str:
        return self.router.redis_url

    @property
    def namespace(self) -> str:
        return self.router.namespace

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> GatewaySettings:
        """Read ``RESOURCE_ROUTER_*`` variables. Overrides named like ``RouterSettings`` fields
        (``redis_url``, ``namespace``, ...) go to ``router``; ``None`` overrides are ignored."""
        env = os.environ if environ is None else environ
        router_fields = set(RouterSettings.model_fields)
        router_overrides = {k: v for k, v in overrides.items() if k in router_fields}
        values: dict[str, object] = {}
        for name in cls.model_fields:
            if name == "router":
                continue
            raw = env.get(f"RESOURCE_ROUTER_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if k not in router_fields and v is not None})
        values["router"] = RouterSettings.from_env(env, **router_overrides)
        return cls.model_validate(values)
