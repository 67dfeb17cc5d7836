"""Access-token authentication for every API that is not the Tracking API: a Bearer token;
the Profile API also takes it as HTTP Basic, as Segment's clients send it."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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


Handler = Callable[[Request], Awaitable[Response]]


def token_guard(catalog: Catalog) -> Callable[[Handler], Handler]:
    """A decorator for endpoints that take an access token (:func:`check_token`)."""

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            refused = check_token(request, catalog)
            if refused is not None:
                return refused
            return await handler(request)

        return endpoint

    return guarded


def check_token_or_basic(request: Request, catalog: Catalog) -> JSONResponse | None:
    """Like :func:`check_token`, also taking the token the way Segment's Profile API clients
    send it: HTTP Basic, the token as user name (the password, empty for Segment, is ignored).
    A write key is refused in either form."""
    token = _sent_token(request.headers.get("authorization", ""))
    if not token:
        return error(
            401,
            "missing_token",
            "send an access token as `Authorization: Bearer TOKEN`, or as the HTTP Basic user "
            "name with an empty password (create one with `clew tokens create NAME`)",
        )
    if not catalog.verify_token(token):
        return error(401, "invalid_token", "the access token is not valid")
    return None


def _sent_token(header: str) -> str:
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0].strip()
    return ""
