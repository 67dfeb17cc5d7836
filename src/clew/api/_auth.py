"""Bearer-token authentication for every API that is not the Tracking API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from clew.sources import Catalog


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def check_token(request: Request, catalog: Catalog) -> JSONResponse | None:
    """``None`` when the request carries a valid access token, else the 401 to send.

    A write key is never accepted here, even a valid one: it may only send events."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(
            401,
            "missing_token",
            "send an access token as `Authorization: Bearer TOKEN` (create one with "
            "`clew tokens create NAME`)",
        )
    if not catalog.verify_token(token.strip()):
        return error(401, "invalid_token", "the access token is not valid")
    return None
