"""Access-token authentication and scopes for every API that is not the Tracking API: a Bearer
token; the Profile API also takes it as HTTP Basic, as Segment's clients send it.

401 means no valid token (missing, unknown, revoked, expired, or a write key); 403 with code
``insufficient_scope`` means a valid token without the scope the route needs (named in the
answer's ``scope``).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from clew.sources import Catalog

Handler = Callable[[Request], Awaitable[Response]]


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def authorize(token: str, catalog: Catalog, scope: str) -> JSONResponse | None:
    """``None`` when ``token`` is a valid access token holding ``scope``, else the 401 or 403
    to send. A write key is never accepted here, even a valid one: it may only send events."""
    found = catalog.token_for(token) if token else None
    if found is None:
        return error(401, "invalid_token", "the access token is not valid")
    if found.expired(time.time()):
        return error(
            401,
            "invalid_token",
            f"the access token {found.name!r} has expired; create a new one with "
            "`clew tokens create NAME --expires …`",
        )
    if scope not in found.scopes:
        return JSONResponse(
            {
                "code": "insufficient_scope",
                "message": f"the access token {found.name!r} lacks the `{scope}` scope this "
                f"endpoint needs; create one with `clew tokens create NAME --scope {scope}`",
                "scope": scope,
            },
            status_code=403,
        )
    return None


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer`` header, empty when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def check_token(request: Request, catalog: Catalog, scope: str) -> JSONResponse | None:
    """``None`` when the request carries, as a Bearer token, a valid access token holding
    ``scope``; else the 401 or 403 to send."""
    token = bearer_token(request)
    if not token:
        return error(
            401,
            "missing_token",
            "send an access token as `Authorization: Bearer TOKEN` (create one with "
            f"`clew tokens create NAME --scope {scope}`)",
        )
    return authorize(token, catalog, scope)


def holds_scope(request: Request, catalog: Catalog, scope: str) -> bool:
    """Whether ``request`` carries, as a Bearer token, a valid access token holding ``scope``
    (for answers that only say more to such a token)."""
    token = bearer_token(request)
    found = catalog.token_for(token) if token else None
    return found is not None and not found.expired(time.time()) and scope in found.scopes


def token_guard(catalog: Catalog, scope: str) -> Callable[[Handler], Handler]:
    """A decorator for endpoints that take an access token holding ``scope``
    (:func:`check_token`)."""

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            refused = check_token(request, catalog, scope)
            if refused is not None:
                return refused
            return await handler(request)

        return endpoint

    return guarded


def check_token_or_basic(request: Request, catalog: Catalog, scope: str) -> JSONResponse | None:
    """Like :func:`check_token`, also taking the token the way Segment's Profile API clients
    send it: HTTP Basic, the token as user name (the password, empty for Segment, is ignored).
    A write key is refused in either form."""
    token = _sent_token(request.headers.get("authorization", ""))
    if not token:
        return error(
            401,
            "missing_token",
            "send an access token as `Authorization: Bearer TOKEN`, or as the HTTP Basic user "
            "name with an empty password (create one with "
            f"`clew tokens create NAME --scope {scope}`)",
        )
    return authorize(token, catalog, scope)


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
