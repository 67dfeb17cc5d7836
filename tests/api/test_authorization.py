"""Who may call what: every route of Clew's apps, read from their route tables, against every
kind of credential. A route added without a guard (or without a line in EXPECTED) fails here.

Credentials: none, a write key, a token of each scope, a revoked token and an expired token.
API routes take a token with their scope (401 without a valid token, 403
``insufficient_scope`` with another scope); Tracking API routes take write keys only; public
routes answer everyone. Console routes (``/console/…``) take a signed-in session only: no API
credential opens one (tests/browser/test_console_*.py check each page's scope).
"""

from __future__ import annotations

import base64
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Route

from _support import WRITE_KEY, make_settings
from clew.background import BackgroundServer
from clew.collector.process import CollectorProcess
from clew.events import PATH_TYPES
from clew.sources import ADMIN, METRICS, PRIVACY, PROFILES, SCOPES, SQL

with warnings.catch_warnings():
    # Starlette asks for httpx2 instead of httpx; the test client drives the app alike.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PUBLIC = "public"
CONSOLE = "console session"
CONSOLE_SIGN_IN = "console sign-in"
# The console's door: its sign-in form, sign-out and its static files answer everyone.
CONSOLE_PUBLIC = {
    ("GET", "/console/login"),
    ("POST", "/console/logout"),
    ("GET", "/console/static/{name}"),
}
# (method, path as in the route table) -> the scope it needs, or PUBLIC.
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/metrics"): METRICS,
    ("POST", "/v1/sql"): SQL,
    ("GET", "/v1/admin/sources/{source}/schemas"): ADMIN,
    ("GET", "/v1/admin/sources/{source}/schemas/{subject}/versions/{version}"): ADMIN,
    ("POST", "/v1/admin/sources/{source}/plan"): ADMIN,
    ("POST", "/v1/admin/sources/{source}/plan/check"): ADMIN,
    ("GET", "/v1/admin/audiences"): ADMIN,
    ("GET", "/v1/admin/audiences/{name}"): ADMIN,
    ("PUT", "/v1/admin/audiences/{name}"): ADMIN,
    ("DELETE", "/v1/admin/audiences/{name}"): ADMIN,
    ("GET", "/v1/profiles/{identifier:path}"): PROFILES,
    ("GET", "/v1/spaces/{space}/collections/users/profiles/{identifier:path}/traits"): PROFILES,
    ("GET", "/v1/spaces/{space}/collections/users/profiles/{identifier:path}/events"): PROFILES,
    (
        "GET",
        "/v1/spaces/{space}/collections/users/profiles/{identifier:path}/external_ids",
    ): PROFILES,
    ("GET", "/v1/spaces/{space}/collections/users/profiles/{identifier:path}/metadata"): PROFILES,
    ("POST", "/v1/privacy/requests"): PRIVACY,
    ("GET", "/v1/privacy/requests"): PRIVACY,
    ("GET", "/v1/privacy/requests/{id}"): PRIVACY,
    # The browser edge (src/clew/edge): what a web page's SDK loads, public as on a CDN.
    ("GET", "/v1/projects/{writeKey}/settings"): PUBLIC,
    ("GET", "/sourceConfig/"): PUBLIC,
    ("OPTIONS", "/sourceConfig/"): PUBLIC,
    ("GET", "/analytics.js/v1/{writeKey}/analytics.min.js"): PUBLIC,
    ("GET", "/analytics-next/bundles/{name}"): PUBLIC,
    ("GET", "/v3/modern/rsa.umd.js"): PUBLIC,
}
# The collector role (`clew collector`) is a plain ASGI app: these are all its paths.
COLLECTOR_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/metrics"): METRICS,
}
WRITE_KEY_ONLY = "write key"
_PARAMS = {
    "source": "tests",
    "subject": "track:Order Completed",
    "version": "latest",
    "name": "nobody",
    "identifier": "user_id:42",
    "space": "s",
    "id": "pr_missing",
    "writeKey": WRITE_KEY,
}


@dataclass(frozen=True)
class Credential:
    name: str
    bearer: str | None = None
    write_key: str | None = None
    scope: str | None = None  # the scope of a valid token


def _path(template: str) -> str:
    # A parameter not named above (a console page's, say) gets a value that names nothing.
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: _PARAMS.get(m.group(1), "nobody"), template)


def _headers(credential: Credential, collector_route: bool) -> dict[str, str]:
    if credential.write_key is not None:
        if collector_route:
            basic = base64.b64encode(f"{credential.write_key}:".encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        return {"Authorization": f"Bearer {credential.write_key}"}
    if credential.bearer is not None:
        return {"Authorization": f"Bearer {credential.bearer}"}
    return {}


def _body(method: str, path: str) -> dict[str, object] | None:
    if method not in ("POST", "PUT"):
        return None
    if path.startswith("/v1/sql"):
        return {"query": "SELECT 1"}
    if PATH_TYPES.get(path.removeprefix("/v1/")) == "batch":
        return {"batch": [{"type": "track", "event": "Signed Up", "userId": "u1"}]}
    return {"type": "track", "event": "Signed Up", "userId": "u1"}


def _credentials(server: BackgroundServer) -> list[Credential]:
    catalog = server.clew.catalog
    creds = [Credential("none"), Credential("write key", write_key=WRITE_KEY)]
    creds += [
        Credential(f"{s} token", catalog.create_token(f"only-{s}", [s]), scope=s) for s in SCOPES
    ]
    revoked = catalog.create_token("revoked", ["all"])
    catalog.revoke_token("revoked")
    expired = catalog.create_token("expired", ["all"], expires_in_s=0.01)
    time.sleep(0.05)
    return [*creds, Credential("revoked token", revoked), Credential("expired token", expired)]


def _needs(method: str, path: str) -> str:
    if (method, path) == ("POST", "/console/login"):
        return CONSOLE_SIGN_IN
    if path == "/console" or path.startswith("/console/"):
        return PUBLIC if (method, path) in CONSOLE_PUBLIC else CONSOLE
    return EXPECTED[(method, path)]


def _check(response: httpx.Response, needs: str, credential: Credential, where: str) -> None:
    status = response.status_code
    if needs == CONSOLE_SIGN_IN:
        # The token is typed into the form; a credential in a header signs no one in.
        assert status == 401 and "set-cookie" not in response.headers, where
    elif needs == CONSOLE:
        # Without a session every console page sends the visitor to the sign-in form.
        assert status == 303, where
        assert response.headers["location"].startswith("/console/login?next="), where
    elif needs == PUBLIC:
        assert status not in (401, 403), where
    elif needs == WRITE_KEY_ONLY:
        if credential.write_key is not None:
            assert status == 200, where
        else:
            assert status == 401, where
    elif credential.scope == needs:
        assert status not in (401, 403), where
    elif credential.scope is not None:
        assert status == 403, where
        assert response.json()["code"] == "insufficient_scope", where
        assert response.json()["scope"] == needs, where
    else:
        assert status == 401, where
        assert response.json()["code"] in ("missing_token", "invalid_token"), where


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    settings = make_settings(tmp_path_factory.mktemp("auth") / "data")
    settings.metrics.require_token = True
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        yield srv


def test_every_route_is_listed_with_the_credential_it_takes(
    guarded_server: BackgroundServer,
) -> None:
    listed = {
        (method, route.path)
        for route in guarded_server.clew.api.routes
        if isinstance(route, Route) and not route.path.startswith("/console")
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert listed == set(EXPECTED), "add the new route to EXPECTED with the scope it needs"
    assert all(isinstance(r, Route) for r in guarded_server.clew.api.routes)


def test_every_route_against_every_credential(guarded_server: BackgroundServer) -> None:
    credentials = _credentials(guarded_server)
    routes = [
        (method, route.path, _needs(method, route.path))
        for route in guarded_server.clew.api.routes
        if isinstance(route, Route)
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]
    routes += [("POST", f"/v1/{name}", WRITE_KEY_ONLY) for name in PATH_TYPES]
    with httpx.Client(base_url=guarded_server.url, timeout=10) as http:
        for method, template, needs in routes:
            path = _path(template)
            for credential in credentials:
                r = http.request(
                    method,
                    path,
                    json=_body(method, path),
                    headers=_headers(credential, needs == WRITE_KEY_ONLY),
                )
                where = f"{method} {path} with {credential.name}: {r.status_code} {r.text[:200]}"
                _check(r, needs, credential, where)


def test_the_collector_role_checks_the_same_credentials(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    settings.metrics.require_token = True
    process = CollectorProcess(settings)
    # No `with`: the collector role's app answers HTTP only (no lifespan).
    client = TestClient(process.app)
    try:
        catalog = process.catalog
        catalog.create_source("tests", WRITE_KEY)
        credentials = [
            Credential("none"),
            Credential("write key", write_key=WRITE_KEY),
            Credential("metrics token", catalog.create_token("m", [METRICS]), scope=METRICS),
            Credential("sql token", catalog.create_token("s", [SQL]), scope=SQL),
        ]
        routes = [(m, p, needs) for (m, p), needs in COLLECTOR_ROUTES.items()]
        routes += [("POST", f"/v1/{name}", WRITE_KEY_ONLY) for name in PATH_TYPES]
        for method, path, needs in routes:
            for credential in credentials:
                r = client.request(
                    method,
                    path,
                    json=_body(method, path),
                    headers=_headers(credential, needs == WRITE_KEY_ONLY),
                )
                where = f"{method} {path} with {credential.name}: {r.status_code} {r.text}"
                _check(r, needs, credential, where)
    finally:
        client.close()
        process.close()


def test_metrics_and_health_details_need_a_metrics_token_when_required(
    guarded_server: BackgroundServer,
) -> None:
    token = guarded_server.clew.catalog.create_token("prometheus", [METRICS])
    url = guarded_server.url
    r = httpx.get(url + "/metrics")
    assert r.status_code == 401 and r.json()["code"] == "missing_token"
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and "clew_collector_requests_total" in r.text
    public = httpx.get(url + "/health")
    assert public.status_code == 200
    assert public.json() == {"ok": True, "status": public.json()["status"]}
    assert public.json()["status"] in ("ok", "degraded")
    full = httpx.get(url + "/health", headers={"Authorization": f"Bearer {token}"}).json()
    assert "validate" in full["stages"] and full["status"] == public.json()["status"]


def test_metrics_stay_public_unless_required(server: BackgroundServer) -> None:
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert "stages" in httpx.get(server.url + "/health").json()
