"""Floor 0 (beside the vocabulary), observability: what the library tells its operators.

The library's structured logger over the standard ``logging`` module, its Prometheus metrics with
bounded labels, OpenTelemetry spans, and the structlog rendering the faces (CLI, demo, replicas) use.
Imports only the vocabulary modules (``errors``, ``settings``, ...).
"""
