"""Reading Prometheus metrics in tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    """The current value of a metric sample (0 when it was never set)."""
    return reg.get_sample_value(name, labels) or 0.0
