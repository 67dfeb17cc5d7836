"""The instrumented example web site (``examples/web``): a small outdoor shop and journal whose
pages load analytics.js or RudderStack's JavaScript SDK from Clew and send page views, an
article read to its end, a call-to-action click, product views, adds to cart, a sign-up and
the visitor's consent.

:func:`example_site_app` serves it with a ``config.js`` naming the SDK, Clew's URL and the
write key; ``clew examples web`` runs it on its own port, so the pages come from another
origin than the API, as a real site does.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

#: The SDKs the site can load: ``segment`` (analytics.js) and ``rudderstack`` (JS SDK v3).
SDKS = ("segment", "rudderstack")


class ExampleSiteError(Exception):
    """The example site cannot be served (not installed, or a wrong option)."""


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """What ``config.js`` tells the pages: Clew's base URL, the write key, the default SDK."""

    api: str
    write_key: str
    sdk: str = "segment"

    def script(self) -> str:
        """``config.js``.

        >>> print(SiteConfig("http://127.0.0.1:8088/", "KEY", "rudderstack").script())
        window.CLEW_EXAMPLE = {"api": "http://127.0.0.1:8088", "writeKey": "KEY", "sdk": "rudderstack"};
        """  # noqa: E501
        body = json.dumps(
            {"api": self.api.rstrip("/"), "writeKey": self.write_key, "sdk": self.sdk}
        )
        # Inside a script, "</" could end it early in a page that inlines the file.
        safe = body.replace("</", "<\\/")
        return f"window.CLEW_EXAMPLE = {safe};"


def example_site_dir() -> Path | None:
    """The site's files: inside the installed package, or in the repository checkout for an
    editable install."""
    packaged = Path(__file__).parents[1] / "examples" / "web"  # clew/examples/web
    checkout = Path(__file__).parents[3] / "examples" / "web"
    return next((p for p in (packaged, checkout) if (p / "site.js").is_file()), None)


def example_site_app(config: SiteConfig, directory: Path | None = None) -> Starlette:
    """The site as an ASGI app: its static files and ``/config.js``."""
    if config.sdk not in SDKS:
        raise ExampleSiteError(f"unknown SDK {config.sdk!r}: choose one of {', '.join(SDKS)}")
    site = directory or example_site_dir()
    if site is None:
        raise ExampleSiteError("the example site (examples/web) is not installed with Clew")
    script = config.script()

    async def config_js(request: Request) -> Response:
        return Response(
            script,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    return Starlette(
        routes=[
            Route("/config.js", config_js, methods=["GET"]),
            Mount("/", StaticFiles(directory=site, html=True)),
        ]
    )


class ExampleSite:
    """The example site (or the pages in ``directory``) served from a background thread on
    ``host:port``: by ``clew serve --examples``, and by the tests."""

    def __init__(
        self, config: SiteConfig, host: str, port: int, directory: Path | None = None
    ) -> None:
        self.url = f"http://{host}:{port}"
        app = example_site_app(config, directory)
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="example-site", daemon=True)

    def __enter__(self) -> ExampleSite:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise ExampleSiteError(f"the example site did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
