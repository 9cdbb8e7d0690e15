"""HTTP metrics of a replica (next to the library's ``ipc_*`` metrics on the same registry)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from resource_router.observability.metrics import metric_set

__all__ = ["GatewayMetrics", "get_gateway_metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class GatewayMetrics:
    requests: Counter
    duration: Histogram
    shed: Counter
    nats_requests: Counter
    routed: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        return cls(
            requests=Counter(
                "ipc_gateway_requests_total",
                "HTTP requests served by the replica (route is the path template)",
                ["method", "route", "status"],
                registry=registry,
            ),
            duration=Histogram(
                "ipc_gateway_request_duration_seconds",
                "HTTP request duration by path template",
                ["route"],
                buckets=_BUCKETS,
                registry=registry,
            ),
            shed=Counter(
                "ipc_gateway_shed_total",
                "Requests answered 503 at once because the process served its max_in_flight already",
                ["transport"],
                registry=registry,
            ),
            nats_requests=Counter(
                "ipc_gateway_nats_requests_total",
                "Requests served on the NATS subjects (subject without its prefix, status as in HTTP)",
                ["subject", "status"],
                registry=registry,
            ),
            routed=Counter(
                "ipc_gateway_routed_calls_total",
                "Calls this replica routed and got an answer for, by the instance that answered (the console's chart)",
                ["service_name", "instance_id"],
                registry=registry,
            ),
        )


def get_gateway_metrics(registry: CollectorRegistry | None = None) -> GatewayMetrics:
    """The HTTP metric set bound to ``registry`` (the default Prometheus registry when None)."""
    return metric_set(GatewayMetrics.create, registry)
