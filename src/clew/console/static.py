"""The console's own stylesheet and script, served from the package (no CDN, no build)."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from clew.console._kit import BASE, ConsoleKit

_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    files = {
        f.name: f.read_bytes()
        for f in resources.files("clew.console").joinpath("static").iterdir()
        if f.name[f.name.rfind(".") :] in _TYPES
    }

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        body = files.get(name)
        if body is None:
            return PlainTextResponse("not found", status_code=404)
        return Response(
            body,
            media_type=_TYPES[name[name.rfind(".") :]],
            headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"},
        )

    return [Route(f"{BASE}/static/{{name}}", static_file, methods=["GET"], name="console_static")]
