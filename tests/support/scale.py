"""The size of slow, chaos and soak tests."""

from __future__ import annotations

import os

#: Scale of slow/chaos/soak tests. CI runs the bounded default (1); RR_SLOW_SCALE=10 for a long run.
SLOW_SCALE = max(1, int(os.environ.get("RR_SLOW_SCALE", "1")))
