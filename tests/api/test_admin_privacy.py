"""Data-subject requests through the Admin API (docs/privacy.md): auth, validation, the
native and Segment's regulation shapes, and no raw identifier in any response."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from _support import WRITE_KEY
from clew.api.privacy import privacy_routes
from clew.privacy.requests import RequestStore
from clew.sources import Catalog

BASE = "/v1/privacy/requests"


class Api:
    def __init__(self, app: Starlette, token: str) -> None:
        self.app = app
        self.headers = {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str = "", auth: bool = True, **kw: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://clew") as c:
                headers = {**(self.headers if auth else {}), **kw.pop("headers", {})}
                return await c.request(method, BASE + path, headers=headers, **kw)

        return anyio.run(send)


@pytest.fixture
def woken() -> list[int]:
    return []


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RequestStore]:
    s = RequestStore(tmp_path / "privacy.db", b"salt")
    yield s
    s.close()


@pytest.fixture
def api(tmp_path: Path, store: RequestStore, woken: list[int]) -> Iterator[Api]:
    catalog = Catalog(tmp_path / "meta.db")
    catalog.create_source("tests", WRITE_KEY)
    token = catalog.create_token("dpo", ["privacy"])
    app = Starlette(routes=privacy_routes(catalog, store, lambda: woken.append(1)))
    yield Api(app, token)
    catalog.close()


def test_a_request_is_queued_and_readable_without_its_raw_identifier(
    api: Api, store: RequestStore, woken: list[int]
) -> None:
    body = {"type": "delete", "identifier": "email:Ada@X.test", "since": "2024-01-01T00:00:00Z"}
    r = api.request("POST", json=body)
    assert r.status_code == 202
    created = r.json()
    assert created["status"] == "received" and created["id"].startswith("pr_")
    assert woken == [1]
    stored = store.get(created["id"])
    assert stored is not None and stored.value == "ada@x.test"
    assert stored.requested_by == "token:dpo"

    one = api.request("GET", f"/{created['id']}")
    assert one.status_code == 200
    shown = one.json()
    assert shown["type"] == "delete" and shown["id_type"] == "email"
    assert shown["since"] == "2024-01-01T00:00:00.000Z" and shown["until"] is None
    assert shown["audit"] is None and len(shown["subject_hash"]) == 64
    listed = api.request("GET").json()["requests"]
    assert [x["id"] for x in listed] == [created["id"]]
    assert "ada" not in one.text.lower() and "ada" not in api.request("GET").text.lower()
    assert api.request("GET", "?status=finished").json() == {"requests": []}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"type": "forget", "identifier": "email:a@x.test"}, "invalid_type"),
        ({"identifier": "email:a@x.test"}, "invalid_type"),
        ({"type": "delete", "identifier": "a@x.test"}, "invalid_identifier"),
        ({"type": "delete", "identifier": 42}, "invalid_identifier"),
        ({"type": "delete", "identifier": "user_id:1", "since": "soon"}, "invalid_time"),
        ({"type": "suppress", "identifier": "user_id:1", "until": "2024-01-01"}, "invalid_time"),
        (
            {"regulationType": "DELETE_INTERNAL", "subjectType": "USER_ID", "subjectIds": ["1"]},
            "invalid_type",
        ),
        (
            {"regulationType": "DELETE_ONLY", "subjectType": "OBJECT_ID", "subjectIds": ["1"]},
            "invalid_identifier",
        ),
        (
            {"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": []},
            "invalid_identifier",
        ),
        (
            {"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": ["1", ""]},
            "invalid_identifier",
        ),
        ([1, 2], "invalid_json"),
    ],
)
def test_unusable_requests_get_400_with_a_code_and_nothing_is_queued(
    api: Api, store: RequestStore, body: Any, code: str
) -> None:
    r = api.request("POST", json=body)
    assert r.status_code == 400
    assert r.json()["code"] == code and r.json()["message"]
    assert store.recent() == []


def test_segment_regulations_become_one_request_per_subject(api: Api, store: RequestStore) -> None:
    body = {
        "regulationType": "SUPPRESS_WITH_DELETE",
        "subjectType": "USER_ID",
        "subjectIds": ["u1", "u2"],
    }
    r = api.request("POST", json=body)
    assert r.status_code == 202
    out = r.json()
    assert out["data"]["regulateId"] == out["requests"][0]["id"]
    stored = [store.get(x["id"]) for x in out["requests"]]
    assert [(s.type, s.id_type, s.value) for s in stored if s] == [
        ("suppress_with_delete", "user_id", "u1"),
        ("suppress_with_delete", "user_id", "u2"),
    ]


def test_every_route_needs_an_access_token_not_a_write_key(api: Api) -> None:
    for method, path in (("POST", ""), ("GET", ""), ("GET", "/pr_1")):
        assert api.request(method, path, auth=False).status_code == 401
        bad = api.request(
            method, path, auth=False, headers={"Authorization": f"Bearer {WRITE_KEY}"}
        )
        assert bad.status_code == 401 and bad.json()["code"] == "invalid_token"


def test_unknown_requests_and_bad_filters(api: Api) -> None:
    r = api.request("GET", "/pr_nope")
    assert r.status_code == 404 and r.json()["code"] == "unknown_request"
    assert api.request("GET", "?status=done").json()["code"] == "invalid_status"
    assert api.request("GET", "?limit=0").json()["code"] == "invalid_limit"
