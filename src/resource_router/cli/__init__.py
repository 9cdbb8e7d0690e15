"""The ``resource-router`` command line (see ``app.py``)."""

from __future__ import annotations

from resource_router.cli.app import build_app, main

__all__ = ["build_app", "main"]
