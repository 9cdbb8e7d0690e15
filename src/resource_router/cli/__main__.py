"""``python -m resource_router.cli``: the same as the ``resource-router`` command."""

from __future__ import annotations

import sys

from resource_router.cli.main import main

sys.exit(main())
