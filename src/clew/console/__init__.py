"""The web console at ``/console`` (docs/console.md): server-rendered pages behind an access
token, for the people who run Clew and the people who use its data."""

from __future__ import annotations

from clew.console._context import ConsoleContext
from clew.console.app import console_routes

__all__ = ["ConsoleContext", "console_routes"]
