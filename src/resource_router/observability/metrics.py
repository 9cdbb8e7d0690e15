"""Prometheus metric objects with the contract's names, one set per collector registry.

The library never starts an HTTP server; the gateway serves ``/metrics`` and applications that embed
the library expose the default registry however they already do.

**Bounded labels.** Label values come from bounded sets, decided here and nowhere else, so that no
caller can grow a process's metrics by sending names (any HTTP caller of a replica can send any
``service_name``):

* ``service_name`` is the name itself only for *known* services, else ``"_other"`` (``OTHER``).
  A service becomes known when this process runs an instance of it, or sees proof that it has
  instances: a lookup that found an owner, a granted registration, an instance's resource count, a
  reply from one of its instances. At most ``LabelSets.max_services`` (256) names are learnt; the
  services of the process's own instances always are.
* ``instance_id`` appears only on gauges, for instances this process has seen alive; their series
  are removed when they stop or are swept (``Metrics.forget_instance``), and at most
  ``LabelSets.max_instances`` (4096) exist at once (writes for more are dropped).

Children are resolved lazily (``ServiceChild``), so a cached child follows a service from
``"_other"`` to its own name once it becomes known, and a gauge re-appears when an instance that was
forgotten reports again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "OTHER",
    "InstanceGauge",
    "LabelSets",
    "Metrics",
    "ServiceChild",
    "ServiceMetric",
    "get_metrics",
    "metric_set",
]

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: The label value of every service name outside the bounded set.
OTHER: Final = "_other"


class LabelSets:
    """The bounded sets that ``service_name`` and ``instance_id`` label values come from."""

    def __init__(self, max_services: int = 256, max_instances: int = 4096) -> None:
        self.max_services = max_services
        self.max_instances = max_instances
        self.services: set[str] = set()
        self.instances: set[tuple[str, str]] = set()

    def learn_service(self, name: str, *, own: bool = False) -> None:
        """Admit ``name`` (``own``: this process runs an instance of it, admitted beyond the cap)."""
        if name not in self.services and (own or len(self.services) < self.max_services):
            self.services.add(name)

    def service(self, name: str) -> str:
        """The label value for service ``name``: itself when known, else ``OTHER``."""
        return name if name in self.services else OTHER


class ServiceChild:
    """A metric child whose ``service_name`` label is resolved when it is used (see the module docstring)."""

    __slots__ = ("_child", "_generation", "_label", "_parent", "_proof", "_rest", "_service")

    def __init__(self, parent: ServiceMetric, service: str, rest: tuple[str, ...], proof: bool) -> None:
        self._parent = parent
        self._service = service
        self._rest = rest
        self._proof = proof
        self._label: str | None = None
        self._child: Any = None
        self._generation = -1

    def _resolve(self) -> Any:
        parent = self._parent
        if self._proof:
            parent.sets.learn_service(self._service)
        label = parent.sets.service(self._service)
        if label is not self._label or self._generation != parent.generation:
            self._label, self._generation = label, parent.generation
            self._child = parent.metric.labels(label, *self._rest)
        return self._child

    def inc(self, amount: float = 1.0) -> None:
        if amount:
            self._resolve().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        if amount:
            self._resolve().dec(amount)

    def observe(self, value: float) -> None:
        self._resolve().observe(value)

    def set(self, value: float) -> None:
        self._resolve().set(value)


class ServiceMetric:
    """A counter, gauge or histogram whose first label is a service name from the bounded set.

    ``proof(rest)`` says which children prove that the service has instances (e.g. lookups with
    ``found="true"``): using one admits the service."""

    def __init__(self, metric: Any, sets: LabelSets, proof: Callable[[tuple[str, ...]], bool] | None = None) -> None:
        self.metric = metric
        self.sets = sets
        self._proof = proof
        self.generation = 0

    def labels(self, service_name: str, *rest: str) -> ServiceChild:
        return ServiceChild(self, service_name, rest, self._proof is not None and self._proof(rest))


class InstanceGauge(ServiceMetric):
    """A gauge labelled ``(service_name, instance_id)``: series of at most ``max_instances`` instances
    at once, removed by ``forget``. Setting it proves the service exists."""

    def labels(self, service_name: str, *rest: str) -> ServiceChild:
        return _InstanceChild(self, service_name, rest, True)

    def forget(self, service_name: str, instance_id: str) -> None:
        self.sets.instances.discard((service_name, instance_id))
        for label in {service_name, OTHER}:
            try:
                self.metric.remove(label, instance_id)
            except KeyError:
                continue
            self.generation += 1  # cached children make their series again when next set


class _InstanceChild(ServiceChild):
    __slots__ = ()

    def _tracked(self) -> bool:
        """True when this instance has (or may now have) a series: at most ``max_instances`` do."""
        instances = self._parent.sets.instances
        key = (self._service, self._rest[0])
        if key not in instances:
            if len(instances) >= self._parent.sets.max_instances:
                return False  # beyond the bound: not recorded
            instances.add(key)
        return True

    def set(self, value: float) -> None:
        if self._tracked():
            self._resolve().set(value)

    def inc(self, amount: float = 1.0) -> None:
        if amount and self._tracked():
            self._resolve().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        if amount and self._tracked():
            self._resolve().dec(amount)


@dataclass(frozen=True)
class Metrics:
    labels: LabelSets
    registrations: ServiceMetric
    releases: ServiceMetric
    conflicts: ServiceMetric
    lookups: ServiceMetric
    resources_per_instance: InstanceGauge
    operation_duration: Histogram
    route_calls: ServiceMetric
    route_requests: ServiceMetric
    dropped_messages: Counter
    instance_listening: InstanceGauge
    activations: ServiceMetric
    moves: ServiceMetric

    def forget_instance(self, service_name: str, instance_id: str) -> None:
        """Remove the gauges of an instance that stopped or was swept."""
        self.resources_per_instance.forget(service_name, instance_id)
        self.instance_listening.forget(service_name, instance_id)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        sets = LabelSets()

        def by_service(metric: Any, proof: Callable[[tuple[str, ...]], bool] | None = None) -> ServiceMetric:
            return ServiceMetric(metric, sets, proof)

        return cls(
            labels=sets,
            registrations=by_service(
                Counter(
                    "ipc_resource_registrations_total",
                    "Resource ids registered (status: granted, conflict, rejected)",
                    ["service_name", "status"],
                    registry=registry,
                ),
                proof=lambda rest: rest == ("granted",),
            ),
            releases=by_service(
                Counter(
                    "ipc_resource_releases_total",
                    "Resource ids released (reason: released, deregistered, instance_offline, lost)",
                    ["service_name", "reason"],
                    registry=registry,
                )
            ),
            conflicts=by_service(
                Counter(
                    "ipc_resource_conflicts_total",
                    "Resource ids refused because another instance owns them",
                    ["service_name"],
                    registry=registry,
                )
            ),
            lookups=by_service(
                Counter(
                    "ipc_resource_lookups_total",
                    "Owner lookups (found: true/false)",
                    ["service_name", "found"],
                    registry=registry,
                ),
                proof=lambda rest: rest == ("true",),
            ),
            resources_per_instance=InstanceGauge(
                Gauge(
                    "ipc_resources_per_instance",
                    "Resources owned by an instance, as last seen by this process (removed when it stops or is swept)",
                    ["service_name", "instance_id"],
                    registry=registry,
                ),
                sets,
            ),
            operation_duration=Histogram(
                "ipc_resource_operation_duration_seconds",
                "Duration of registry and routing operations",
                ["operation"],
                buckets=_BUCKETS,
                registry=registry,
            ),
            route_calls=by_service(
                Counter(
                    "ipc_route_calls_total",
                    "Routed calls by outcome (ok or an error type)",
                    ["service_name", "outcome"],
                    registry=registry,
                ),
                proof=lambda rest: rest == ("ok",),
            ),
            route_requests=by_service(
                Counter(
                    "ipc_route_requests_total",
                    "Requests received by instances, by outcome (ok, error, not_owner, method_not_found, invalid)",
                    ["service_name", "outcome"],
                    registry=registry,
                )
            ),
            dropped_messages=Counter(
                "ipc_dropped_messages_total",
                "Pub/sub messages dropped (malformed, foreign, version, oversized, expired, late, unsigned, "
                "forged, replayed, misaddressed)",
                ["reason"],
                registry=registry,
            ),
            instance_listening=InstanceGauge(
                Gauge(
                    "ipc_instance_listening",
                    "1 while an instance of this process hears its request channel, 0 while its connection "
                    "is being re-established (removed when the instance stops)",
                    ["service_name", "instance_id"],
                    registry=registry,
                ),
                sets,
            ),
            activations=by_service(
                Counter(
                    "ipc_placement_activations_total",
                    "Activation requests a placement volunteer received, by outcome (activated, "
                    "owned_elsewhere, full, refused, error)",
                    ["service_name", "outcome"],
                    registry=registry,
                )
            ),
            moves=by_service(
                Counter(
                    "ipc_resource_moves_total",
                    "Resource ids an instance let go of by a drain, rebalance or idle release (reason), by "
                    "result (moved: to a volunteer; released: nobody took it; kept: the release failed)",
                    ["service_name", "reason", "result"],
                    registry=registry,
                )
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
