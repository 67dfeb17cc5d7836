"""Audience and trait definitions through the Admin API (docs/audiences.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from _support import WRITE_KEY
from clew.api.audiences import audience_routes
from clew.audiences.definitions import parse_document
from clew.audiences.repository import DefinitionRepository
from clew.audiences.status import BACKFILL_GROUP, backfill_key
from clew.background import BackgroundServer
from clew.sources import Catalog
from clew.store import MemoryProfileStore

BASE = "/v1/admin/audiences"
LTV = {"type": "trait", "kind": "sum", "event": "Order Completed", "property": "revenue"}
BIG = {"type": "audience", "condition": {"computed": "ltv", "op": "gte", "value": 500}}


class Admin:
    """Requests to the routes in process (``auth=False``: without the access token)."""

    def __init__(self, app: Starlette, token: str, store: MemoryProfileStore) -> None:
        self.app, self.store = app, store
        self.headers = {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, auth: bool = True, **kw: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://clew") as c:
                headers = {**(self.headers if auth else {}), **kw.pop("headers", {})}
                return await c.request(method, BASE + path, headers=headers, **kw)

        return anyio.run(send)

    def get(self, path: str = "") -> httpx.Response:
        return self.request("GET", path)

    def put(self, name: str, body: Any) -> httpx.Response:
        return self.request("PUT", f"/{name}", json=body)

    def delete(self, name: str) -> httpx.Response:
        return self.request("DELETE", f"/{name}")


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    catalog = Catalog(tmp_path / "meta.db")
    catalog.create_source("tests", WRITE_KEY)
    token = catalog.create_token("admin", ["admin"])
    store = MemoryProfileStore()
    app = Starlette(routes=audience_routes(catalog, DefinitionRepository(tmp_path), store))
    yield Admin(app, token, store)
    store.close()
    catalog.close()


def test_only_access_tokens_get_in(admin: Admin) -> None:
    assert admin.request("GET", "", auth=False).status_code == 401
    write_key = {"Authorization": f"Bearer {WRITE_KEY}"}
    assert admin.request("PUT", "/ltv", auth=False, json=LTV, headers=write_key).status_code == 401
    assert admin.request("DELETE", "/ltv", auth=False).status_code == 401
    assert admin.get().json() == {"definitions": []}


def test_put_get_list_and_delete(admin: Admin) -> None:
    put = admin.put("ltv", LTV)
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["type"] == "trait" and body["name"] == "ltv" and body["changed"] is True
    assert body["source"] == {"name": "ltv", **{k: v for k, v in LTV.items() if k != "type"}}
    assert admin.put("ltv", {**LTV, "name": "ltv"}).json()["changed"] is False
    assert admin.put("big", BIG).status_code == 200

    listing = admin.get().json()["definitions"]
    assert [(d["type"], d["name"]) for d in listing] == [("trait", "ltv"), ("audience", "big")]
    assert all(len(d["fingerprint"]) == 16 and d["backfilled_at"] is None for d in listing)

    pid = admin.store.touch("p1", 1)
    admin.store.update_computed(pid, lambda c: {**c, "audiences": ["big"]})
    big = admin.get("/big").json()
    assert big["size"] == 1 and big["source"]["condition"] == BIG["condition"]
    trait = admin.get("/ltv").json()
    assert "size" not in trait
    got = admin.get("/nope")
    assert got.status_code == 404 and got.json()["code"] == "unknown_definition"

    in_use = admin.delete("ltv")
    assert in_use.status_code == 409 and in_use.json()["code"] == "definition_in_use"
    assert "'big'" in in_use.json()["message"]
    assert admin.delete("big").status_code == 204
    assert admin.delete("big").status_code == 404
    assert admin.delete("ltv").status_code == 204
    assert admin.get().json() == {"definitions": []}


def test_backfill_state_of_the_current_version(admin: Admin) -> None:
    admin.put("ltv", LTV)
    assert admin.get("/ltv").json()["backfilled_at"] is None
    (ltv,) = parse_document({**LTV, "name": "ltv"})
    admin.store.save_offsets(BACKFILL_GROUP, {backfill_key(ltv): 1_700_000_000_000})
    assert admin.get("/ltv").json()["backfilled_at"] == "2023-11-14T22:13:20.000Z"


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("ltv", {**LTV, "kind": "median"}, "kind 'median' is not one of"),
        ("ltv", {**LTV, "name": "other"}, "the body names 'other' but the path 'ltv'"),
        ("ltv", {"kind": "count"}, "'type': 'trait' or 'audience'"),
        ("ltv", [LTV], "one definition as a JSON object"),
        ("big", {**BIG, "condition": {"audience": "ghost"}}, "'ghost', which is not defined"),
        ("big", BIG, "reads computed trait 'ltv', which is not defined"),
        ("loop", {"type": "audience", "condition": {"audience": "loop"}}, "cycle: loop -> loop"),
        ("bad-name", LTV, "use a letter then letters, digits or '_'"),
        ("audiences", LTV, "maintained by Clew"),
    ],
)
def test_an_unusable_definition_is_a_400_that_says_why(
    admin: Admin, name: str, body: Any, message: str
) -> None:
    r = admin.put(name, body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_definition"
    assert message in r.json()["message"]
    assert admin.get().json() == {"definitions": []}


def test_invalid_json_is_a_400(admin: Admin) -> None:
    r = admin.request("PUT", "/ltv", content=b"{")
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"


def test_clew_serve_mounts_the_routes_on_its_data_dir(server: BackgroundServer) -> None:
    token = server.clew.catalog.create_token("admin", ["admin"])
    h = {"Authorization": f"Bearer {token}"}
    r = httpx.put(f"{server.url}{BASE}/ltv", json=LTV, headers=h)
    assert r.status_code == 200, r.text
    assert (server.clew.settings.data_dir / "audiences" / "ltv.json").is_file()
    listing = httpx.get(f"{server.url}{BASE}", headers=h).json()["definitions"]
    assert [d["name"] for d in listing] == ["ltv"]
