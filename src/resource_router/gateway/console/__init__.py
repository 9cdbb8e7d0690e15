"""The operator console of a replica: ``/console``, a page that shows a namespace's services, their
live instances (lease left, volunteer flag, owned count), one resource's owner, the spread over
partitions and Redis masters, the live feed of ownership events (server-sent events) and a chart of
the calls per second this replica routed to each instance. Every asset (HTML, JavaScript, CSS) is in
the package (``static/``); the JSON endpoints behind the page are under ``/v1/console/``, and they
only read what a replica already reads.
"""

from __future__ import annotations

from .overview import ConsoleReader
from .pages import CONSOLE_URL, install_console

__all__ = ["CONSOLE_URL", "ConsoleReader", "install_console"]
