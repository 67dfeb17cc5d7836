"""What every browser-edge response shares: public CORS headers, short caching of settings,
and the JSON errors."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

#: Settings and bundles are public (a web page ships the write key), as on the SDKs' CDNs:
#: any origin may read them.
CORS = {"Access-Control-Allow-Origin": "*"}
#: Settings change when a key is rotated or removed; a minute is what a browser may keep them.
SETTINGS_CACHE = "public, max-age=60"


def settings_response(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers={**CORS, "Cache-Control": SETTINGS_CACHE})


def error(status: int, code: str, message: str) -> JSONResponse:
    """``{"code", "message"}`` with the CORS header, so the page's script can read why; never
    cached, so a key created a moment later works on the next load."""
    return JSONResponse(
        {"code": code, "message": message},
        status_code=status,
        headers={**CORS, "Cache-Control": "no-store"},
    )


def unknown_write_key() -> JSONResponse:
    return error(
        404,
        "unknown_write_key",
        "no source has this write key (`clew sources list` shows them; a rotated key stops "
        "after its grace period, a removed one at once)",
    )


def preflight(request: Request) -> Response:
    """The answer to a CORS preflight of a GET: any origin, and the headers the page asks
    for (a browser SDK sends the write key as Basic auth)."""
    asked = request.headers.get("access-control-request-headers", "Authorization")
    return Response(
        status_code=204,
        headers={
            **CORS,
            "Access-Control-Allow-Methods": "GET, OPTIONS",
            "Access-Control-Allow-Headers": asked,
            "Access-Control-Max-Age": "86400",
        },
    )
