"""Assembles the console's routes: sign-in, the static files, and every section's pages."""

from __future__ import annotations

from starlette.routing import BaseRoute

from clew.console import (
    audiences,
    auth,
    destinations,
    live,
    overview,
    people,
    privacy,
    quality,
    static,
)
from clew.console._context import ConsoleContext
from clew.console._kit import ConsoleKit
from clew.console._session import Sessions

_SECTIONS = (auth, static, overview, live, people, audiences, quality, destinations, privacy)


def console_routes(ctx: ConsoleContext) -> list[BaseRoute]:
    """The console's routes, mounted beside the HTTP APIs by ``clew serve``."""
    kit = ConsoleKit(ctx, Sessions(ctx.settings.console_key_path, ctx.catalog))
    return [route for section in _SECTIONS for route in section.routes(kit)]
