"""The console's audiences section (being built; see docs/console.md)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from clew.console._kit import ConsoleKit


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    return []
