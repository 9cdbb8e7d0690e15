"""The options of one ``ServiceInstance``, checked in one place (defaults come from ``settings.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resource_router.errors import InvalidRequestError
from resource_router.placement.strategies import validate_strategy
from resource_router.settings import MAX_TTL, MIN_TTL, validate_seconds

__all__ = ["InstanceOptions"]


@dataclass(frozen=True, slots=True)
class InstanceOptions:
    """What a ``ServiceInstance`` was asked to be (see its docstring for each option)."""

    ttl: float
    metadata: dict[str, Any]
    max_concurrency: int
    sweep_interval: float
    drain_timeout: float
    accept_placement: bool
    placement: str
    rebalance: bool
    rebalance_rate: float
    idle_timeout: float | None
    serial_per_resource: bool
    confirm_after: float
    reclaim_after_failover: bool

    @classmethod
    def checked(
        cls,
        *,
        ttl: object,
        metadata: dict[str, Any] | None,
        max_concurrency: object,
        sweep_interval: object,
        drain_timeout: object,
        accept_placement: bool,
        placement: object,
        rebalance: bool,
        rebalance_rate: object,
        idle_timeout: object,
        serial_per_resource: bool,
        confirm_after: object,
        reclaim_after_failover: bool,
    ) -> InstanceOptions:
        """The options, each checked; ``InvalidRequestError`` naming the first bad one."""
        lease = validate_seconds(ttl, "ttl", low=MIN_TTL, high=MAX_TTL)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise InvalidRequestError("max_concurrency must be a positive integer", field="max_concurrency")
        return cls(
            ttl=lease,
            metadata=dict(metadata or {}),
            max_concurrency=max_concurrency,
            sweep_interval=lease
            if sweep_interval is None
            else validate_seconds(sweep_interval, "sweep_interval", low=0),
            drain_timeout=validate_seconds(drain_timeout, "drain_timeout", low=0),
            accept_placement=bool(accept_placement),
            placement=validate_strategy(placement),
            rebalance=bool(rebalance),
            rebalance_rate=validate_seconds(rebalance_rate, "rebalance_rate", low=0.1),  # ids per second
            idle_timeout=None if idle_timeout is None else validate_seconds(idle_timeout, "idle_timeout", low=0.01),
            serial_per_resource=bool(serial_per_resource),
            confirm_after=validate_seconds(confirm_after, "confirm_after", low=0.0, high=lease),
            reclaim_after_failover=bool(reclaim_after_failover),
        )
