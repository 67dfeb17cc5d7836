"""The browser edge: what a web page's analytics SDK fetches from Clew before it sends events
(the SDKs' settings endpoints and the SDK bundles themselves). Every route is public and
readable from any origin: a web page ships its write key."""

from __future__ import annotations

from functools import partial

from starlette.routing import BaseRoute, Route

from clew.config import Settings
from clew.edge.bundles import (
    ANALYTICS_JS_PATH,
    RUDDERSTACK_PATH,
    SEGMENT_CHUNK_PATH,
    Bundles,
    Vendor,
)
from clew.edge.settings import project_settings, segment_settings
from clew.edge.source_config import rudder_source_config, source_config
from clew.sources import Catalog

__all__ = [
    "ANALYTICS_JS_PATH",
    "RUDDERSTACK_PATH",
    "SEGMENT_CHUNK_PATH",
    "Bundles",
    "Vendor",
    "edge_routes",
    "rudder_source_config",
    "segment_settings",
]


def edge_routes(catalog: Catalog, settings: Settings) -> list[BaseRoute]:
    """The browser edge's routes, mounted beside the HTTP APIs by ``clew serve``."""
    bundles = Bundles(Vendor())
    return [
        Route(
            "/v1/projects/{writeKey}/settings",
            partial(project_settings, catalog),
            methods=["GET"],
            name="segment_settings",
        ),
        Route(
            "/sourceConfig/",
            partial(source_config, catalog),
            methods=["GET", "OPTIONS"],
            name="rudderstack_source_config",
        ),
        Route(ANALYTICS_JS_PATH, bundles.analytics_js, methods=["GET"], name="analytics_js"),
        Route(SEGMENT_CHUNK_PATH, bundles.segment_chunk, methods=["GET"], name="segment_chunk"),
        Route(RUDDERSTACK_PATH, bundles.rudderstack, methods=["GET"], name="rudderstack_sdk"),
    ]
