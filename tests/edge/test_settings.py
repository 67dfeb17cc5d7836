"""analytics.js's ``GET /v1/projects/{writeKey}/settings`` and RudderStack's ``GET
/sourceConfig/``, in process: the shape each SDK starts from, 404 for a key that is no
source's, CORS and caching."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning

from _support import WRITE_KEY, make_settings
from clew.background import BackgroundServer
from clew.edge import edge_routes
from clew.sources import Catalog

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(tmp_path / "meta.db")
    catalog.create_source("web", WRITE_KEY)
    yield catalog
    catalog.close()


@pytest.fixture
def client(catalog: Catalog, tmp_path: Path) -> Iterator[TestClient]:
    app = Starlette(routes=edge_routes(catalog, make_settings(tmp_path / "data")))
    with TestClient(app, base_url="http://clew.test:8088") as c:
        yield c


def _public(headers: object) -> None:
    assert headers["access-control-allow-origin"] == "*"  # type: ignore[index]
    assert headers["cache-control"] == "public, max-age=60"  # type: ignore[index]


def test_analytics_js_settings_point_the_sdk_at_the_host_it_asked(client: TestClient) -> None:
    r = client.get(f"/v1/projects/{WRITE_KEY}/settings", headers={"Origin": "http://shop.test"})
    assert r.status_code == 200
    _public(r.headers)
    body = r.json()
    segment = body["integrations"]["Segment.io"]
    assert segment["apiKey"] == WRITE_KEY
    assert segment["apiHost"] == "clew.test:8088/v1"
    assert segment["protocol"] == "http"
    # Only Clew: no device-mode destination, no remote plugin, no telemetry of the SDK's own.
    assert list(body["integrations"]) == ["Segment.io"]
    assert body["remotePlugins"] == [] and body["metrics"]["sampleRate"] == 0
    assert not any(body["enabledMiddleware"].values())


def test_analytics_js_settings_follow_the_scheme_of_the_request(
    catalog: Catalog, tmp_path: Path
) -> None:
    app = Starlette(routes=edge_routes(catalog, make_settings(tmp_path / "data")))
    with TestClient(app, base_url="https://cdp.shop.test") as c:
        segment = c.get(f"/v1/projects/{WRITE_KEY}/settings").json()["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment["protocol"]) == ("cdp.shop.test/v1", "https")


def test_unknown_and_removed_keys_are_404_unknown_write_key(
    client: TestClient, catalog: Catalog
) -> None:
    catalog.create_source("old", "old-write-key")
    catalog.remove_source("old")
    for key in ("nobody", "old-write-key"):
        for r in (
            client.get(f"/v1/projects/{key}/settings"),
            client.get("/sourceConfig/", params={"writeKey": key}),
        ):
            assert r.status_code == 404, r.text
            assert r.json()["code"] == "unknown_write_key"
            assert r.headers["access-control-allow-origin"] == "*"
            assert r.headers["cache-control"] == "no-store"


def test_rudderstack_source_config_is_what_the_sdk_validates(
    client: TestClient, catalog: Catalog
) -> None:
    # The request the SDK v3 makes: its query string, and the key as Basic auth too.
    basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    r = client.get(
        "/sourceConfig/",
        params={
            "p": "npm",
            "v": "3.34.1",
            "build": "modern",
            "writeKey": WRITE_KEY,
            "lockIntegrationsVersion": "false",
            "lockPluginsVersion": "false",
        },
        headers={"Authorization": f"Basic {basic}", "Origin": "http://shop.test"},
    )
    assert r.status_code == 200
    _public(r.headers)
    source = r.json()["source"]
    assert source["id"] == catalog.source("web").id
    assert source["enabled"] is True
    assert isinstance(source["config"], dict) and source["destinations"] == []
    assert source["config"]["statsCollection"]["errors"]["enabled"] is False
    assert source["config"]["statsCollection"]["metrics"]["enabled"] is False


def test_rudderstack_source_config_takes_the_key_from_basic_auth_alone(client: TestClient) -> None:
    basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    r = client.get("/sourceConfig/", headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200 and r.json()["source"]["writeKey"] == WRITE_KEY
    r = client.get("/sourceConfig/")
    assert r.status_code == 400 and r.json()["code"] == "missing_write_key"


def test_rudderstack_preflight_allows_the_basic_auth_header(client: TestClient) -> None:
    r = client.options(
        "/sourceConfig/",
        headers={
            "Origin": "http://shop.test",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "GET" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"].lower() == "authorization"


def test_behind_a_local_tls_proxy_the_settings_name_its_https_host(
    server: BackgroundServer,
) -> None:
    """A proxy on the same machine (nginx terminating TLS) forwards the public host and
    ``X-Forwarded-Proto: https``; the page must then send to https://that-host/v1."""
    r = httpx.get(
        f"{server.url}/v1/projects/{WRITE_KEY}/settings",
        headers={"Host": "cdp.shop.test", "X-Forwarded-Proto": "https"},
        timeout=5,
    )
    segment = r.json()["integrations"]["Segment.io"]
    assert (segment["apiHost"], segment["protocol"]) == ("cdp.shop.test/v1", "https")
