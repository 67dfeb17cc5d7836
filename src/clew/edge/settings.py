"""analytics.js's settings: ``GET /v1/projects/{writeKey}/settings``, what
``@segment/analytics-next`` fetches from its CDN before it sends anything.

The answer names Clew itself as the ``Segment.io`` integration's API host (the host and
scheme the page reached Clew by), no device-mode destinations, no middleware, no plan, and
a metrics sample rate of 0 so the SDK reports no telemetry of its own anywhere.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clew.edge._http import settings_response, unknown_write_key
from clew.sources import Catalog


def segment_settings(write_key: str, host: str, scheme: str) -> dict[str, Any]:
    """The settings object analytics-next starts from, for a page that reached Clew at
    ``scheme://host`` (``host`` with its port).

    >>> s = segment_settings("KEY", "127.0.0.1:8088", "http")
    >>> s["integrations"]["Segment.io"]["apiHost"], s["integrations"]["Segment.io"]["protocol"]
    ('127.0.0.1:8088/v1', 'http')
    >>> s["metrics"]["sampleRate"]
    0
    """
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"componentTypes": []},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "consentSettings": {"allCategories": [], "hasUnmappedDestinations": False},
    }


def request_host(request: Request) -> str:
    """``host:port`` the page reached Clew by (its Host header)."""
    return request.headers.get("host") or request.url.netloc


async def project_settings(catalog: Catalog, request: Request) -> Response:
    """``GET /v1/projects/{writeKey}/settings``: 404 ``unknown_write_key`` for a key that is
    no source's (never was, removed, or rotated past its grace period)."""
    write_key = request.path_params["writeKey"]
    if catalog.source_for_key(write_key) is None:
        return unknown_write_key()
    return settings_response(segment_settings(write_key, request_host(request), request.url.scheme))
