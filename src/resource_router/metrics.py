"""Prometheus metric objects with the contract's names, one set per collector registry.

The library never starts an HTTP server; the gateway serves ``/metrics`` and applications that embed
the library expose the default registry however they already do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "get_metrics", "metric_set"]

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Metrics:
    registrations: Counter
    releases: Counter
    conflicts: Counter
    lookups: Counter
    resources_per_instance: Gauge
    operation_duration: Histogram
    route_calls: Counter
    route_requests: Counter
    dropped_messages: Counter
    instance_listening: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        return cls(
            registrations=Counter(
                "ipc_resource_registrations_total",
                "Resource ids registered (status: granted, conflict, rejected)",
                ["service_name", "status"],
                registry=registry,
            ),
            releases=Counter(
                "ipc_resource_releases_total",
                "Resource ids released (reason: released, deregistered, instance_offline, lost)",
                ["service_name", "reason"],
                registry=registry,
            ),
            conflicts=Counter(
                "ipc_resource_conflicts_total",
                "Resource ids refused because another instance owns them",
                ["service_name"],
                registry=registry,
            ),
            lookups=Counter(
                "ipc_resource_lookups_total",
                "Owner lookups (found: true/false)",
                ["service_name", "found"],
                registry=registry,
            ),
            resources_per_instance=Gauge(
                "ipc_resources_per_instance",
                "Resources owned by an instance, as last seen by this process",
                ["service_name", "instance_id"],
                registry=registry,
            ),
            operation_duration=Histogram(
                "ipc_resource_operation_duration_seconds",
                "Duration of registry and routing operations",
                ["operation"],
                buckets=_BUCKETS,
                registry=registry,
            ),
            route_calls=Counter(
                "ipc_route_calls_total",
                "Routed calls by outcome (ok or an error type)",
                ["service_name", "outcome"],
                registry=registry,
            ),
            route_requests=Counter(
                "ipc_route_requests_total",
                "Requests received by instances, by outcome (ok, error, not_owner, method_not_found, invalid)",
                ["service_name", "outcome"],
                registry=registry,
            ),
            dropped_messages=Counter(
                "ipc_dropped_messages_total",
                "Pub/sub messages dropped (malformed, foreign, expired, oversized)",
                ["reason"],
                registry=registry,
            ),
            instance_listening=Gauge(
                "ipc_instance_listening",
                "1 while an instance of this process hears its request channel, 0 while its connection "
                "is being re-established (removed when the instance stops)",
                ["service_name", "instance_id"],
                registry=registry,
            ),
        )


_LOCK = threading.Lock()
_SETS: dict[tuple[Callable[[CollectorRegistry], Any], int], tuple[CollectorRegistry, Any]] = {}

S = TypeVar("S")


def metric_set(create: Callable[[CollectorRegistry], S], registry: CollectorRegistry | None = None) -> S:
    """The metric set made by ``create`` for ``registry`` (default: the Prometheus default registry),
    made once: Prometheus refuses to register the same metric name twice in one registry."""
    reg = REGISTRY if registry is None else registry
    key = (create, id(reg))
    with _LOCK:
        entry = _SETS.get(key)
        if entry is None or entry[0] is not reg:
            entry = (reg, create(reg))
            _SETS[key] = entry
        result: S = entry[1]
        return result


def get_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """The library's metric set bound to ``registry`` (the default Prometheus registry when None)."""
    return metric_set(Metrics.create, registry)
