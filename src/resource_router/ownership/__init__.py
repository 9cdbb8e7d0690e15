"""Floor 2, ownership: who owns what, kept in Redis, and an instance's own view of it.

The ``ResourceRegistry`` facade over leases, grants, owner reads and volunteer records; the sweeper;
ownership events and the audit streams; every key name (``keys.py``); Lua loading (``scripts.py``);
and ``view.py``, what one instance believes it owns (no Redis). Imports ``transport`` and below.
"""
