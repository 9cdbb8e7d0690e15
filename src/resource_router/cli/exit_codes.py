"""The command line's exit codes (the module docstring of ``main.py`` says when each is used)."""

from __future__ import annotations

__all__ = ["EXIT_CANNOT_LISTEN", "EXIT_ERROR", "EXIT_INVALID", "EXIT_OK", "EXIT_REDIS_UNAVAILABLE"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_REDIS_UNAVAILABLE = 3
EXIT_CANNOT_LISTEN = 4
