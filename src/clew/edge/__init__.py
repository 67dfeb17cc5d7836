"""The browser edge: what a web page's analytics SDK fetches from Clew before it sends events
(the SDKs' settings endpoints and the SDK bundles themselves)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from clew.config import Settings
from clew.sources import Catalog


def edge_routes(catalog: Catalog, settings: Settings) -> list[BaseRoute]:
    """The browser edge's routes, mounted beside the HTTP APIs by ``clew serve``."""
    return []
