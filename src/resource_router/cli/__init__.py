"""Floor 5, a face: the ``resource-router`` command line (``main.py`` lists the commands).

One module per command group (``inspect.py``, ``serve.py``) over what they share (``invocation.py``,
``output.py``, ``exit_codes.py``). May import every floor below, the gateway and the demo included.
"""

from __future__ import annotations

from resource_router.cli.main import build_app, main

__all__ = ["build_app", "main"]
