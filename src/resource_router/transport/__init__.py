"""Floor 1, transport: how the library reaches Redis.

Connections and URLs (single Redis, Redis Cluster, the embedded ``memory://``), the pub/sub hub over
one transport seam (``base.py``; single, cluster), the wire and its measured fast path, the one mapping
of Redis errors, the retry policy, deadlines and background tasks. Imports only the vocabulary floor
(``errors``, ``models``, ``settings``, ``ids``, ``reasons``, ``status``) and ``observability``.
"""
