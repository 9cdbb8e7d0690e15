"""Settings are explicit objects built in one place; nothing is read from the environment at import."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_REDIS_URL", "ENV_REDIS_URL", "RouterSettings"]

ENV_REDIS_URL = "RESOURCE_ROUTER_REDIS_URL"
DEFAULT_REDIS_URL = "memory://"


class RouterSettings(BaseModel):
    """Knobs shared by the registry, instances, clients, the CLI and the gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = "rr"
    max_resources_per_instance: int = Field(default=1000, ge=1, le=1_000_000)
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
    operation_timeout: float = Field(default=5.0, gt=0, le=300)
    #: Attempts for idempotent operations when Redis is unreachable (1 = no retry).
    retry_attempts: int = Field(default=3, ge=1, le=20)
    retry_initial_backoff: float = Field(default=0.05, gt=0)
    retry_max_backoff: float = Field(default=1.0, gt=0)
    #: Connections of one client made by the library (single Redis: a blocking pool, callers wait
    #: for a free connection within their deadline; Redis Cluster: per node).
    max_connections: int = Field(default=128, ge=1, le=100_000)
    #: Bound on opening one connection to Redis (TCP connect and TLS handshake).
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
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
    #: Largest resource metadata (JSON bytes) stored per grant.
    max_metadata_bytes: int = Field(default=4096, ge=64)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> RouterSettings:
        """Read ``RESOURCE_ROUTER_*`` variables; explicit keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(f"RESOURCE_ROUTER_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
