"""The Profile API over real HTTP, against each serving-store backend, checked against
docs/profile-api.md: any identifier (or old profile id) of a merged profile reaches the
survivor, Segment's paths answer in Segment's shapes, and only access tokens get in."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from starlette.applications import Starlette

from _support import WRITE_KEY
from clew.api.profiles import iso_time, profile_routes
from clew.background import free_port
from clew.sources import Catalog
from clew.store import (
    MemoryProfileStore,
    ProfileStore,
    Provenance,
    SQLiteProfileStore,
    StoredEvent,
)

T0 = 1_700_000_000_000
SEGMENT = "/v1/spaces/any-space/collections/users/profiles"
EVENTS = 25


def prov(i: int, source: str = "web", weight: float | None = None) -> Provenance:
    return Provenance(f"m{i}", source, T0 + i * 1000, weight)


def event(i: int) -> StoredEvent:
    kind = "page" if i % 5 == 0 else "track"
    body: dict[str, Any] = {
        "type": kind,
        "messageId": f"e{i}",
        "timestamp": iso_time(T0 + i * 60_000),
        "sourceId": "src-web" if i % 2 else "src-ios",
    }
    if kind == "track":
        body["event"] = "Order Completed" if i % 3 == 0 else "Product Viewed"
    return StoredEvent(0, f"e{i}", T0 + i * 60_000, msgspec.json.encode(body))


def populate(store: ProfileStore) -> None:
    """Ada uses three profiles that get merged: p-crm into p-phone, then p-phone into p-ada
    (so p-crm redirects through a chain). Bob has a profile of his own."""
    store.attach("p-ada", "user_id", "ada", prov(1))
    store.attach("p-ada", "email", "ada+news@example.com", prov(2))
    store.attach("p-phone", "phone", "+442079460958", prov(3, "ios"))
    store.attach("p-phone", "anonymous_id", "anon-1", prov(4, "ios"))
    store.attach("p-crm", "crm_id", "crm/7:x", prov(5, "crm", weight=7.25))
    store.update_traits("p-ada", lambda _: {"name": "Ada", "plan": "pro", "city": "London"})
    store.update_traits("p-phone", lambda _: {"phone_model": "X", "plan": "free"})
    store.update_computed(
        "p-ada",
        lambda _: {
            "orders_count": 3,
            "total_lifetime_value": 120.5,
            "audiences": ["big_spenders", "londoners"],
            "_trait_times": {"name": T0},
        },
    )
    for i in range(EVENTS):
        store.add_event(("p-ada", "p-phone", "p-crm")[i % 3], event(i))
    store.merge("p-phone", "p-crm", prov(30))
    store.merge("p-ada", "p-phone", prov(31))
    store.attach("p-bob", "user_id", "bob", prov(40))


@dataclass(frozen=True)
class Api:
    http: httpx.Client
    token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params, headers=self.bearer)


def open_store(kind: str, path: Path) -> ProfileStore:
    return SQLiteProfileStore(path / "store.db") if kind == "sqlite" else MemoryProfileStore()


@pytest.fixture(scope="module", params=["sqlite", "memory"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("profiles")
    store = open_store(request.param, tmp)
    populate(store)
    catalog = Catalog(tmp / "meta.db")
    catalog.create_source("tests", WRITE_KEY)
    token = catalog.create_token("reader")
    app = Starlette(routes=profile_routes(store, catalog))
    with serving(app) as url, httpx.Client(base_url=url) as http:
        yield Api(http, token)
    store.close()
    catalog.close()


class serving:
    """An ASGI app served by uvicorn on a free loopback port in a background thread."""

    def __init__(self, app: Starlette) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning"
        )
        self.url = f"http://127.0.0.1:{config.port}"
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


# -- lookup ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identifier",
    [
        "user_id:ada",
        "email:ada+news@example.com",
        "phone:+442079460958",
        "anonymous_id:anon-1",
        "crm_id:crm%2F7:x",
        "profile_id:p-ada",
        "profile_id:p-phone",
        "profile_id:p-crm",
        "segment_id:p-crm",
    ],
)
def test_every_identifier_and_old_id_of_a_merged_profile_gives_the_survivor(
    api: Api, identifier: str
) -> None:
    r = api.get(f"/v1/profiles/{identifier}")
    assert r.status_code == 200, r.text
    assert r.json()["profile_id"] == "p-ada"
    segment = api.get(f"{SEGMENT}/{identifier}/traits", include="name")
    assert segment.json()["traits"] == {"name": "Ada"}


def test_profile_shape(api: Api) -> None:
    body = api.get("/v1/profiles/user_id:ada").json()
    assert body == {
        "profile_id": "p-ada",
        "identities": [
            {
                "type": "anonymous_id",
                "value": "anon-1",
                "source_id": "ios",
                "message_id": "m4",
                "timestamp": "2023-11-14T22:13:24.000Z",
                "match_weight": None,
            },
            {
                "type": "crm_id",
                "value": "crm/7:x",
                "source_id": "crm",
                "message_id": "m5",
                "timestamp": "2023-11-14T22:13:25.000Z",
                "match_weight": 7.25,
            },
            {
                "type": "email",
                "value": "ada+news@example.com",
                "source_id": "web",
                "message_id": "m2",
                "timestamp": "2023-11-14T22:13:22.000Z",
                "match_weight": None,
            },
            {
                "type": "phone",
                "value": "+442079460958",
                "source_id": "ios",
                "message_id": "m3",
                "timestamp": "2023-11-14T22:13:23.000Z",
                "match_weight": None,
            },
            {
                "type": "user_id",
                "value": "ada",
                "source_id": "web",
                "message_id": "m1",
                "timestamp": "2023-11-14T22:13:21.000Z",
                "match_weight": None,
            },
        ],
        "traits": {"name": "Ada", "plan": "pro", "city": "London", "phone_model": "X"},
        "computed_traits": {"orders_count": 3, "total_lifetime_value": 120.5},
        "audiences": ["big_spenders", "londoners"],
        "first_seen": "2023-11-14T22:13:21.000Z",
        "last_seen": "2023-11-14T22:13:25.000Z",
    }
    bob = api.get("/v1/profiles/user_id:bob").json()
    assert bob["computed_traits"] == {} and bob["audiences"] == [] and bob["traits"] == {}


@pytest.mark.parametrize(
    "email",
    [
        "ada%2Bnews%40example.com",
        "ada+news%40example.com",
        "ada%2bnews@example.com",
        "Ada+News@Example.COM",
    ],
)
def test_emails_are_url_decoded_and_matched_as_stored(api: Api, email: str) -> None:
    r = api.get(f"/v1/profiles/email:{email}")
    assert r.status_code == 200, r.text
    assert r.json()["profile_id"] == "p-ada"


def test_phone_numbers_are_matched_as_stored(api: Api) -> None:
    for phone in ("%2B442079460958", "+44%2020%207946%200958", "%2B44 (20) 7946-0958"):
        r = api.get(f"/v1/profiles/phone:{phone}")
        assert r.status_code == 200, (phone, r.text)
        assert r.json()["profile_id"] == "p-ada"
    assert api.get("/v1/profiles/phone:not-a-number").status_code == 404


def test_unknown_profiles_are_404(api: Api) -> None:
    for path in (
        "/v1/profiles/user_id:nobody",
        "/v1/profiles/profile_id:p-nobody",
        "/v1/profiles/email:ada@example.com",
        f"{SEGMENT}/user_id:nobody/traits",
        f"{SEGMENT}/user_id:nobody/events",
        f"{SEGMENT}/user_id:nobody/external_ids",
        f"{SEGMENT}/user_id:nobody/metadata",
    ):
        r = api.get(path)
        assert r.status_code == 404, path
        assert r.json()["code"] == "profile_not_found"
        assert "nobody" not in r.json()["message"], "identifiers are not echoed back"


@pytest.mark.parametrize("identifier", ["ada", ":ada", "user_id:", "%3Aada"])
def test_malformed_identifiers_are_400_showing_the_expected_shape(
    api: Api, identifier: str
) -> None:
    for path in (f"/v1/profiles/{identifier}", f"{SEGMENT}/{identifier}/traits"):
        r = api.get(path)
        assert r.status_code == 400, path
        assert r.json()["code"] == "invalid_identifier"
        assert "`id_type:value`" in r.json()["message"]


# -- auth -----------------------------------------------------------------------------------


def basic(user: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_access_token_as_bearer_or_basic_and_never_a_write_key(api: Api) -> None:
    paths = ["/v1/profiles/user_id:ada"] + [
        f"{SEGMENT}/user_id:ada/{part}" for part in ("traits", "events", "external_ids", "metadata")
    ]
    get = api.http.get
    for path in paths:
        assert get(path, headers=api.bearer).status_code == 200, path
        assert get(path, headers=basic(api.token)).status_code == 200, path
        assert get(path, auth=(api.token, "")).status_code == 200, path

        missing = get(path)
        assert missing.status_code == 401 and missing.json()["code"] == "missing_token"
        assert "Bearer" in missing.json()["message"] and "Basic" in missing.json()["message"]
        for headers in (
            basic(WRITE_KEY),
            {"Authorization": f"Bearer {WRITE_KEY}"},
            basic("clew_not-a-token"),
        ):
            refused = get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert refused.json() == {
                "code": "invalid_token",
                "message": "the access token is not valid",
            }
        garbled = get(path, headers={"Authorization": "Basic %%%"})
        assert garbled.status_code == 401 and garbled.json()["code"] == "missing_token"


# -- Segment paths --------------------------------------------------------------------------


def test_traits_merge_custom_computed_and_audiences_with_include(api: Api) -> None:
    body = api.get(f"{SEGMENT}/user_id:ada/traits", limit=200).json()
    assert body["traits"] == {
        "big_spenders": True,
        "city": "London",
        "londoners": True,
        "name": "Ada",
        "orders_count": 3,
        "phone_model": "X",
        "plan": "pro",
        "total_lifetime_value": 120.5,
    }
    assert body["cursor"] == {
        "url": f"{SEGMENT}/user_id:ada/traits",
        "has_more": False,
        "next": "",
        "limit": 200,
    }
    picked = api.get(f"{SEGMENT}/user_id:ada/traits", include="name, plan,missing").json()
    assert picked["traits"] == {"name": "Ada", "plan": "pro"}
    audiences = api.get(f"{SEGMENT}/user_id:ada/traits", **{"class": "audience"}).json()
    assert audiences["traits"] == {"big_spenders": True, "londoners": True}
    computed = api.get(f"{SEGMENT}/user_id:ada/traits", **{"class": "computed_trait"}).json()
    assert computed["traits"] == {"orders_count": 3, "total_lifetime_value": 120.5}


def test_traits_pages_walk_every_trait_once_in_name_order(api: Api) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    first = api.get(f"{SEGMENT}/user_id:ada/traits").json()
    assert len(first["traits"]) == 8 and first["cursor"]["limit"] == 10, "default limit 10"
    while True:
        body = api.get(f"{SEGMENT}/user_id:ada/traits", **params).json()
        assert len(body["traits"]) <= 3
        seen += body["traits"]
        if not body["cursor"]["has_more"]:
            assert body["cursor"]["next"] == ""
            break
        params["next"] = body["cursor"]["next"]
    assert seen == sorted(first["traits"])


def test_events_pages_walk_the_history_once_newest_first(api: Api) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 7}
    pages = 0
    while True:
        r = api.get(f"{SEGMENT}/profile_id:p-crm/events", **params)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        seen += [e["messageId"] for e in body["data"]]
        if not body["cursor"]["has_more"]:
            assert body["cursor"]["next"] == ""
            break
        assert isinstance(body["cursor"]["next"], str)
        params["next"] = body["cursor"]["next"]
    assert pages == 4
    assert seen == [f"e{i}" for i in reversed(range(EVENTS))]

    default = api.get(f"{SEGMENT}/user_id:ada/events").json()
    assert [e["messageId"] for e in default["data"]] == seen[:10]
    assert default["data"][0] == msgspec.json.decode(event(EVENTS - 1).body), "stored JSON"


def test_events_filters(api: Api) -> None:
    def ids(**params: Any) -> list[str]:
        r = api.get(f"{SEGMENT}/user_id:ada/events", **params)
        assert r.status_code == 200, r.text
        return [e["messageId"] for e in r.json()["data"]]

    orders = [f"e{i}" for i in reversed(range(EVENTS)) if i % 5 and i % 3 == 0]
    assert ids(include="Order Completed", limit=200) == orders
    assert ids(include="Order Completed", limit=2) == orders[:2]
    pages = [f"e{i}" for i in reversed(range(EVENTS)) if i % 5 == 0]
    assert ids(include="page") == pages
    assert len(ids(exclude="Product Viewed,page", limit=200)) == len(orders)
    window = ids(start=iso_time(T0 + 10 * 60_000), end=iso_time(T0 + 13 * 60_000))
    assert window == ["e12", "e11", "e10"]
    assert ids(start="2099-01-01") == []
    assert api.get(f"{SEGMENT}/user_id:bob/events").json()["data"] == []


def test_external_ids_shape_include_and_pages(api: Api) -> None:
    body = api.get(f"{SEGMENT}/email:ada%2Bnews%40example.com/external_ids").json()
    assert body["data"][0] == {
        "id": "anon-1",
        "type": "anonymous_id",
        "source_id": "ios",
        "collection": "users",
        "created_at": "2023-11-14T22:13:24.000Z",
        "encoding": "none",
        "first_message_id": "m4",
    }
    assert [(d["type"], d["id"]) for d in body["data"]] == [
        ("anonymous_id", "anon-1"),
        ("crm_id", "crm/7:x"),
        ("email", "ada+news@example.com"),
        ("phone", "+442079460958"),
        ("user_id", "ada"),
    ]
    assert body["cursor"]["has_more"] is False
    only = api.get(f"{SEGMENT}/user_id:ada/external_ids", include="user_id,email").json()
    assert [d["type"] for d in only["data"]] == ["email", "user_id"]

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = api.get(f"{SEGMENT}/user_id:ada/external_ids", **params).json()
        seen += [d["id"] for d in page["data"]]
        if not page["cursor"]["has_more"]:
            break
        params["next"] = page["cursor"]["next"]
    assert seen == [d["id"] for d in body["data"]]


def test_metadata(api: Api) -> None:
    body = api.get(f"{SEGMENT}/anonymous_id:anon-1/metadata").json()
    assert body == {
        "metadata": {
            "created_at": "2023-11-14T22:13:21.000Z",
            "updated_at": "2023-11-14T22:13:25.000Z",
            "expires_at": None,
            "first_message_id": "m1",
            "first_source_id": "web",
            "last_message_id": f"e{EVENTS - 1}",
            "last_source_id": "src-ios",
        }
    }
    bob = api.get(f"{SEGMENT}/user_id:bob/metadata").json()["metadata"]
    assert bob["first_message_id"] == bob["last_message_id"] == "m40"


@pytest.mark.parametrize(
    ("part", "params", "code"),
    [
        ("traits", {"limit": "0"}, "invalid_limit"),
        ("traits", {"limit": "201"}, "invalid_limit"),
        ("events", {"limit": "ten"}, "invalid_limit"),
        ("traits", {"class": "everything"}, "invalid_parameter"),
        ("events", {"next": "abc"}, "invalid_cursor"),
        ("events", {"sort": "asc"}, "invalid_parameter"),
        ("events", {"start": "yesterday"}, "invalid_parameter"),
    ],
)
def test_bad_parameters_are_400(api: Api, part: str, params: dict[str, str], code: str) -> None:
    r = api.get(f"{SEGMENT}/user_id:ada/{part}", **params)
    assert r.status_code == 400 and r.json()["code"] == code, r.text


def test_reads_offloaded_to_threads_answer_the_same(tmp_path: Path) -> None:
    store = open_store("sqlite", tmp_path)
    populate(store)
    catalog = Catalog(tmp_path / "meta.db")
    token = catalog.create_token("reader")
    app = Starlette(routes=profile_routes(store, catalog, offload=True))
    try:
        with serving(app) as url, httpx.Client(base_url=url) as http:
            api = Api(http, token)
            assert api.get("/v1/profiles/segment_id:p-crm").json()["profile_id"] == "p-ada"
            assert len(api.get(f"{SEGMENT}/user_id:ada/events").json()["data"]) == 10
            assert api.get("/v1/profiles/user_id:nobody").status_code == 404
    finally:
        store.close()
        catalog.close()
