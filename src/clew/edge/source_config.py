"""RudderStack's source configuration: ``GET /sourceConfig/``, what the JavaScript SDK v3
(``@rudderstack/analytics-js``) fetches from its ``configUrl`` before it sends anything.

The SDK asks ``{configUrl}/sourceConfig/?p=…&v=…&build=…&writeKey=KEY&lockIntegrationsVersion=…
&lockPluginsVersion=…`` with the write key also as HTTP Basic user name (so the browser
preflights it). It needs ``source.id``, ``source.config`` and ``source.destinations``; Clew
answers with no device-mode destinations and the SDK's own error and metrics reporting off.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from clew.edge._http import error, preflight, settings_response, unknown_write_key
from clew.sources import Catalog, Source


def rudder_source_config(source: Source, write_key: str) -> dict[str, Any]:
    """The source configuration the SDK loads from, for ``source`` reached by ``write_key``
    (the key the page sent: during a rotation's grace period, the old one).

    >>> from clew.sources import Source
    >>> config = rudder_source_config(Source("src_1", "web", "KEY", 0.0), "KEY")
    >>> config["source"]["id"], config["source"]["destinations"]
    ('src_1', [])
    """
    return {
        "isHosted": False,
        "source": {
            "id": source.id,
            "name": source.name,
            "writeKey": write_key,
            "enabled": True,
            "workspaceId": "clew",
            "deleted": False,
            "config": {
                "statsCollection": {
                    "errors": {"enabled": False},
                    "metrics": {"enabled": False},
                }
            },
            "destinations": [],
        },
    }


def write_key_of(request: Request) -> str | None:
    """The ``writeKey`` query parameter, else the Basic auth user name."""
    key = request.query_params.get("writeKey")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth[:6].lower() != "basic ":
        return None
    try:
        user = base64.b64decode(auth[6:].strip(), validate=True).decode().split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user or None


async def source_config(catalog: Catalog, request: Request) -> Response:
    """``GET /sourceConfig/`` (``OPTIONS``: the CORS preflight). 400 ``missing_write_key``
    without a key, 404 ``unknown_write_key`` for a key that is no source's."""
    if request.method == "OPTIONS":
        return preflight(request)
    key = write_key_of(request)
    if key is None:
        return error(
            400,
            "missing_write_key",
            "send the write key as ?writeKey= or as HTTP Basic user name",
        )
    found = catalog.source_for_key(key)
    if found is None:
        return unknown_write_key()
    return settings_response(rudder_source_config(found, key))
