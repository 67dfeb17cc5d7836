"""The SDK bundles Clew serves, so a web page loads its analytics SDK from Clew instead of a
vendor's CDN: the published npm builds vendored under ``vendor/`` by
``scripts/vendor_sdks.py`` and listed, with their sha256, in ``vendor/manifest.json``.

- ``/analytics.js/v1/{writeKey}/analytics.min.js``: analytics-next's standalone build, at the
  path Segment's snippet asks for (the same file for every key; the page's snippet carries the
  key). It loads its chunks from ``{cdn}/analytics-next/bundles/{name}``, ``{cdn}`` being
  ``analytics._cdn``.
- ``/v3/modern/rsa.umd.js``: RudderStack's bundled UMD build (its plugins inside). It is not
  the CDN's ``rsa.min.js``: it defines ``rudderanalytics.RudderAnalytics`` instead of reading
  the snippet's call buffer, so the page creates the instance itself (README, "From a web
  site").

Chunk names carry their content hash and are cached for a year; the two entry files for an
hour, then revalidated by their ETag (the sha256 of the bytes sent). A client accepting gzip
gets the package's own ``.gz`` twin of a file when it ships one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from clew.edge._http import CORS, error

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
MANIFEST = "manifest.json"

SEGMENT = "@segment/analytics-next"
RUDDERSTACK = "@rudderstack/analytics-js"
SEGMENT_ENTRY = "dist/umd/standalone.js"
SEGMENT_CHUNKS = "dist/umd/"
RUDDERSTACK_ENTRY = "dist/npm/modern/bundled/umd/index.js"

ANALYTICS_JS_PATH = "/analytics.js/v1/{writeKey}/analytics.min.js"
SEGMENT_CHUNK_PATH = "/analytics-next/bundles/{name}"
RUDDERSTACK_PATH = "/v3/modern/rsa.umd.js"

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=3600"
JAVASCRIPT = "text/javascript; charset=utf-8"


@dataclass(frozen=True, slots=True)
class VendoredFile:
    """One file of a vendored package: its path in the package, where it lies, its sha256."""

    package: str
    version: str
    path: str
    location: Path
    sha256: str


class Vendor:
    """The vendored packages of ``manifest.json`` under ``root``."""

    def __init__(self, root: Path = VENDOR_DIR) -> None:
        manifest = json.loads((root / MANIFEST).read_text())
        self.files: dict[tuple[str, str], VendoredFile] = {}
        self.versions: dict[str, str] = {}
        for pkg in manifest["packages"]:
            self.versions[pkg["package"]] = pkg["version"]
            for path, digest in pkg["files"].items():
                self.files[pkg["package"], path] = VendoredFile(
                    pkg["package"], pkg["version"], path, root / pkg["directory"] / path, digest
                )

    def get(self, package: str, path: str) -> VendoredFile | None:
        return self.files.get((package, path))


class Bundles:
    """The handlers serving the vendored files; each file is read once, when first asked."""

    def __init__(self, vendor: Vendor) -> None:
        self.vendor = vendor
        self._bytes: dict[Path, bytes] = {}

    async def analytics_js(self, request: Request) -> Response:
        return self._serve(request, SEGMENT, SEGMENT_ENTRY, REVALIDATE)

    async def segment_chunk(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        if ".bundle." not in name or "/" in name:
            return _no_such_bundle(request)
        return self._serve(request, SEGMENT, SEGMENT_CHUNKS + name, IMMUTABLE)

    async def rudderstack(self, request: Request) -> Response:
        return self._serve(request, RUDDERSTACK, RUDDERSTACK_ENTRY, REVALIDATE)

    def _serve(self, request: Request, package: str, path: str, cache: str) -> Response:
        plain = self.vendor.get(package, path)
        if plain is None or not path.endswith(".js"):
            return _no_such_bundle(request)
        gzipped = self.vendor.get(package, path + ".gz")
        sent = gzipped if gzipped is not None and _accepts_gzip(request) else plain
        etag = f'"{sent.sha256}"'
        headers = {
            **CORS,
            "Cache-Control": cache,
            "ETag": etag,
            "Vary": "Accept-Encoding",
        }
        if sent is gzipped:
            headers["Content-Encoding"] = "gzip"
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(self._read(sent), media_type=JAVASCRIPT, headers=headers)

    def _read(self, file: VendoredFile) -> bytes:
        data = self._bytes.get(file.location)
        if data is None:
            data = self._bytes[file.location] = file.location.read_bytes()
        return data


def _accepts_gzip(request: Request) -> bool:
    """``gzip`` is among the Accept-Encoding codings, without ``q=0``."""
    for coding in request.headers.get("accept-encoding", "").split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip().lower() in ("gzip", "*") and params.replace(" ", "") not in (
            "q=0",
            "q=0.0",
        ):
            return True
    return False


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _no_such_bundle(request: Request) -> Response:
    return error(404, "not_found", f"no such SDK file: {request.url.path}")
