"""The SDK bundles Clew serves: every file is the published npm build listed in the vendored
manifest (a hand edit fails here), at the paths the SDKs and their snippets ask for, with a
JavaScript type, public CORS, caching and gzip."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import warnings
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning

from _support import WRITE_KEY, make_settings
from clew.edge import edge_routes
from clew.edge.bundles import (
    MANIFEST,
    RUDDERSTACK,
    RUDDERSTACK_ENTRY,
    SEGMENT,
    SEGMENT_ENTRY,
    VENDOR_DIR,
    Vendor,
)
from clew.sources import Catalog

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

ANALYTICS_JS = f"/analytics.js/v1/{WRITE_KEY}/analytics.min.js"
RSA = "/v3/modern/rsa.umd.js"
PLAIN = {"Accept-Encoding": "identity"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("bundles")
    catalog = Catalog(tmp / "meta.db")
    app = Starlette(routes=edge_routes(catalog, make_settings(tmp / "data")))
    with TestClient(app) as c:
        yield c
    catalog.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chunks() -> list[str]:
    """The chunk files analytics-next's webpack runtime can load (name.bundle.hash.js)."""
    text = Vendor().get(SEGMENT, SEGMENT_ENTRY).location.read_text()  # type: ignore[union-attr]
    names, hashes = re.search(
        r"a\.u=function\(t\)\{return\(\{(.*?)\}\[t\]\|\|t\)\+\"\.bundle\.\"\+\{(.*?)\}", text
    ).groups()  # type: ignore[union-attr]
    name_of = dict(re.findall(r'(\d+):"([^"]+)"', names))
    return [
        f"{name_of.get(i, i)}.bundle.{h}.js" for i, h in re.findall(r'(\d+):"([0-9a-f]+)"', hashes)
    ]


def test_the_vendored_files_are_the_manifest_s_and_nothing_else() -> None:
    manifest = json.loads((VENDOR_DIR / MANIFEST).read_text())
    listed = set()
    for pkg in manifest["packages"]:
        assert pkg["integrity"].startswith("sha512-")
        for path, digest in pkg["files"].items():
            location = VENDOR_DIR / pkg["directory"] / path
            assert _sha(location.read_bytes()) == digest, f"{location} differs from the manifest"
            listed.add(location)
        assert any(p.lower() == "license.md" for p in pkg["files"]), pkg["package"]
    on_disk = {p for p in VENDOR_DIR.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert on_disk == listed
    for path in listed:
        if path.suffix == ".gz":
            assert gzip.decompress(path.read_bytes()) == path.with_suffix("").read_bytes()


def test_every_served_file_is_byte_for_byte_the_published_one(client: TestClient) -> None:
    vendor = Vendor()
    served = {
        ANALYTICS_JS: (SEGMENT, SEGMENT_ENTRY),
        RSA: (RUDDERSTACK, RUDDERSTACK_ENTRY),
        **{f"/analytics-next/bundles/{c}": (SEGMENT, f"dist/umd/{c}") for c in _chunks()},
    }
    assert len(served) >= 9
    for url, (package, path) in served.items():
        for coding in ("identity", "gzip"):
            with client.stream("GET", url, headers={"Accept-Encoding": coding}) as r:
                sent = b"".join(r.iter_raw())  # as sent: not inflated
            twin = vendor.get(package, path + ".gz") if coding == "gzip" else None
            expected = twin or vendor.get(package, path)
            assert r.status_code == 200 and expected is not None, url
            assert _sha(sent) == expected.sha256, f"{url} ({coding}) is not the vendored file"
            assert r.headers.get("content-encoding") == ("gzip" if twin else None), url
            assert r.headers["etag"] == f'"{expected.sha256}"', url


def test_analytics_js_is_javascript_for_any_origin_and_revalidates(client: TestClient) -> None:
    r = client.get(ANALYTICS_JS, headers=PLAIN)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert "analytics-next/bundles/" in r.text  # where it loads its chunks from
    again = client.get(ANALYTICS_JS, headers={**PLAIN, "If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other_key = client.get("/analytics.js/v1/another-key/analytics.min.js", headers=PLAIN)
    assert other_key.content == r.content


def test_chunks_are_immutable_and_unknown_ones_are_404(client: TestClient) -> None:
    chunk = client.get(f"/analytics-next/bundles/{_chunks()[0]}")
    assert chunk.status_code == 200
    assert chunk.headers["cache-control"] == "public, max-age=31536000, immutable"
    for name in ("nope.bundle.0.js", "LICENSE.MD", "standalone.js.map"):
        r = client.get(f"/analytics-next/bundles/{name}")
        assert r.status_code == 404, name
        assert r.json()["code"] == "not_found"
    assert client.get("/analytics-next/bundles/..%2Fstandalone.js").status_code == 404


def test_rudderstack_bundle_defines_the_class_a_page_instantiates(client: TestClient) -> None:
    r = client.get(RSA, headers=PLAIN)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "global.rudderanalytics = {}" in r.text
    assert "exports.RudderAnalytics" in r.text
