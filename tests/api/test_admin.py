"""The schema registry through the Admin API."""

from __future__ import annotations

import httpx

from _support import WRITE_KEY
from clew.background import BackgroundServer

ORDER_V1 = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "revenue": {"type": "number"}},
    "required": ["order_id"],
}


def _plan(schema: dict[str, object]) -> dict[str, object]:
    return {
        "enforcement": "block_violations",
        "compatibility": "BACKWARD",
        "subjects": [{"subject": "track:Order Completed", "schema": schema}],
    }


def test_publish_list_get_and_refuse_breaking_changes(server: BackgroundServer) -> None:
    token = server.clew.catalog.create_token("admin", ["admin"])
    h = {"Authorization": f"Bearer {token}"}
    base = server.url + "/v1/admin/sources/web"
    assert httpx.get(base + "/schemas").status_code == 401
    assert httpx.post(base + "/plan", json=_plan(ORDER_V1), auth=(WRITE_KEY, "")).status_code == 401

    r = httpx.post(base + "/plan", json=_plan(ORDER_V1), headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["published"][0]["schemaver"] == "1-0-0"

    listing = httpx.get(base + "/schemas", headers=h).json()
    assert listing["enforcement"] == "block_violations"
    assert [s["subject"] for s in listing["subjects"]] == ["track:Order Completed"]

    stricter = {**ORDER_V1, "required": ["order_id", "revenue"]}
    check = httpx.post(base + "/plan/check", json=_plan(stricter), headers=h).json()
    assert check["compatible"] is False
    assert any("revenue" in c["path"] or "revenue" in c["message"] for c in check["changes"])

    refused = httpx.post(base + "/plan", json=_plan(stricter), headers=h)
    assert refused.status_code == 409
    assert refused.json()["code"] == "incompatible_schema" and refused.json()["changes"]

    got = httpx.get(base + "/schemas/track:Order Completed/versions/latest", headers=h)
    assert got.status_code == 200 and got.json()["schema"] == ORDER_V1
    missing = httpx.get(base + "/schemas/track:Nope/versions/1", headers=h)
    assert missing.status_code == 404 and missing.json()["code"] == "schema_not_found"
    bad = httpx.post(base + "/plan", content=b"{", headers=h)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_plan"
