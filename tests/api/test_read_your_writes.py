"""Read your writes, as docs/profile-api.md ("Read your writes") promises it: every Tracking API
answer names where it stored the request (``Clew-Position``, readable by a browser), and the
Profile API's ``after=POSITION`` answers only once the profiles stage has applied it, or 409
``not_yet``; a parameter that is not one is a 400, never a 5xx."""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.exceptions import StarletteDeprecationWarning

from _support import WRITE_KEY
from _tracking_api import BASIC
from clew.api._after import MAX_WAIT_MS
from clew.background import BackgroundServer
from clew.collector.app import BEACON_PATH
from clew.config import Settings
from clew.raw_records import POSITION_HEADER, RawPosition
from clew.server import Clew

with warnings.catch_warnings():
    # Starlette asks for httpx2 instead of httpx; the test client drives the app alike.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

POSITION = re.compile(r"^raw:\d+:\d+$")
WAIT_LONG_MS = 5000


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def identify(client: httpx.Client | TestClient, user: str, **traits: Any) -> str:
    """Send an identify; the position its answer names."""
    r = client.post(
        "/v1/identify",
        json={"type": "identify", "userId": user, "traits": traits},
        headers={"Authorization": BASIC},
    )
    assert r.status_code == 200, r.text
    assert r.content == b'{"success":true}', "the body SDKs read is unchanged"
    return r.headers[POSITION_HEADER]


def profile(
    client: httpx.Client | TestClient, token: str, user: str, **params: str | int
) -> httpx.Response:
    return client.get(f"/v1/profiles/user_id:{user}", params=params, headers=bearer(token))


@pytest.fixture
def served(server: BackgroundServer) -> Iterator[tuple[httpx.Client, str]]:
    """A running Clew (stages in threads) and a token for its Profile API."""
    token = server.clew.catalog.create_token("personalise", ["profiles"])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, token


class Paused:
    """A Clew whose stages have not started yet, served in process."""

    def __init__(self, settings: Settings) -> None:
        self.clew = Clew(settings)
        self.clew.catalog.create_source("tests", WRITE_KEY)
        self.token = self.clew.catalog.create_token("personalise", ["profiles"])
        self.client = TestClient(self.clew.app, raise_server_exceptions=False)
        self.started = False

    def start_stages(self) -> None:
        self.clew.start()
        self.started = True


@pytest.fixture
def paused(settings: Settings) -> Iterator[Paused]:
    p = Paused(settings)
    try:
        yield p
    finally:
        if not p.started:
            p.start_stages()
        p.clew.stop(drain_timeout_s=1)


# -- the round trip -------------------------------------------------------------------------


def test_an_identify_is_seen_by_the_next_read_after_it(
    served: tuple[httpx.Client, str],
) -> None:
    client, token = served
    user = f"u-{uuid.uuid4().hex[:8]}"
    for plan in ("free", "pro", "team", "enterprise"):
        position = identify(client, user, plan=plan)
        assert POSITION.match(position), position
        r = profile(client, token, user, after=position, wait_ms=WAIT_LONG_MS)
        assert r.status_code == 200, r.text
        assert r.json()["traits"]["plan"] == plan


def test_segment_paths_take_after_too(served: tuple[httpx.Client, str]) -> None:
    client, token = served
    user = f"u-{uuid.uuid4().hex[:8]}"
    position = identify(client, user, plan="pro")
    r = client.get(
        f"/v1/spaces/main/collections/users/profiles/user_id:{user}/traits",
        params={"after": position, "wait_ms": WAIT_LONG_MS},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    assert r.json()["traits"]["plan"] == "pro"


def test_before_the_stages_ran_the_read_is_not_yet_then_it_is_answered(
    paused: Paused,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    position = identify(paused.client, user, name="Ada")
    for wait in ({}, {"wait_ms": 0}, {"wait_ms": 30}):
        r = profile(paused.client, paused.token, user, after=position, **wait)
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "not_yet"
        assert position in r.json()["message"]
    paused.start_stages()
    r = profile(paused.client, paused.token, user, after=position, wait_ms=WAIT_LONG_MS)
    assert r.status_code == 200, r.text
    assert r.json()["traits"]["name"] == "Ada"
    # Applied once, applied for good: no wait needed any more.
    assert profile(paused.client, paused.token, user, after=position).status_code == 200


def test_a_request_validate_rejects_is_applied_once_validated(
    served: tuple[httpx.Client, str],
) -> None:
    """Nothing of it reaches the profiles stage: there is nothing more to wait for."""
    client, token = served
    user = f"u-{uuid.uuid4().hex[:8]}"
    identify(client, user, plan="free")
    r = client.post(
        "/v1/track", json={"type": "track", "userId": user}, headers={"Authorization": BASIC}
    )  # no `event`: rejected to the dead-letter queue by validate
    assert r.status_code == 200
    r = profile(client, token, user, after=r.headers[POSITION_HEADER], wait_ms=WAIT_LONG_MS)
    assert r.status_code == 200, r.text


# -- the header on every path ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/track", {"type": "track", "event": "Viewed", "userId": "u"}),
        ("/v1/identify", {"type": "identify", "userId": "u"}),
        ("/v1/page", {"type": "page", "userId": "u"}),
        ("/v1/t", {"type": "track", "event": "Viewed", "userId": "u"}),
        ("/v1/batch", {"batch": [{"type": "track", "event": "Viewed", "userId": "u"}]}),
    ],
)
def test_every_accepted_request_names_its_position(
    paused: Paused, path: str, body: dict[str, Any]
) -> None:
    r = paused.client.post(path, json=body, headers={"Authorization": BASIC})
    assert r.status_code == 200, r.text
    assert POSITION.match(r.headers[POSITION_HEADER])


def test_rudderstack_beacons_and_browsers_get_the_position(paused: Paused) -> None:
    """A beacon (text/plain, key in the query) gets one; a browser's cross-origin fetch may
    read it (Access-Control-Expose-Headers)."""
    beacon = paused.client.post(
        f"{BEACON_PATH}?writeKey={WRITE_KEY}",
        content=b'{"batch":[{"type":"track","event":"Left","anonymousId":"a"}]}',
        headers={"Content-Type": "text/plain"},
    )
    assert beacon.status_code == 200, beacon.text
    assert POSITION.match(beacon.headers[POSITION_HEADER])
    r = paused.client.post(
        "/v1/track",
        json={"type": "track", "event": "Added", "anonymousId": "a"},
        headers={"Authorization": BASIC, "Origin": "https://shop.test"},
    )
    assert r.headers["access-control-expose-headers"] == POSITION_HEADER
    assert POSITION.match(r.headers[POSITION_HEADER])


def test_positions_of_one_partition_grow(paused: Paused) -> None:
    seen: dict[int, int] = {}
    for _ in range(12):
        position = RawPosition.parse(identify(paused.client, "u-grow"))
        assert position.offset > seen.get(position.partition, -1)
        seen[position.partition] = position.offset


def test_a_request_that_stores_nothing_still_names_a_position(paused: Paused) -> None:
    """An empty batch stores nothing; its answer still carries a position (one already
    stored), which a read may wait for like any other."""
    first = identify(paused.client, "u-empty")
    r = paused.client.post("/v1/batch", json={"batch": []}, headers={"Authorization": BASIC})
    assert r.status_code == 200
    assert r.headers[POSITION_HEADER] == first


def test_refusals_name_no_position(paused: Paused) -> None:
    r = paused.client.post("/v1/track", content=b"{", headers={"Authorization": BASIC})
    assert r.status_code == 400
    assert POSITION_HEADER not in r.headers


# -- parameters that are not one ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"after": ""}, "invalid_position"),
        ({"after": "garbage"}, "invalid_position"),
        ({"after": "raw:1"}, "invalid_position"),
        ({"after": "raw:-1:0"}, "invalid_position"),
        ({"after": "raw:0:1.5"}, "invalid_position"),
        ({"after": "events:0:1"}, "invalid_position"),
        ({"after": "raw:99:0"}, "invalid_position"),  # no such partition
        ({"after": "raw:0:99999999"}, "invalid_position"),  # not written yet
        ({"after": "raw:0:0", "wait_ms": "soon"}, "invalid_parameter"),
        ({"after": "raw:0:0", "wait_ms": "-1"}, "invalid_parameter"),
        ({"after": "raw:0:0", "wait_ms": str(MAX_WAIT_MS + 1)}, "invalid_parameter"),
    ],
)
def test_a_malformed_after_or_wait_is_a_400(
    paused: Paused, params: dict[str, str], code: str
) -> None:
    identify(paused.client, "u-400")
    r = profile(paused.client, paused.token, "u-400", **params)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code


def test_after_needs_the_token_like_any_read(paused: Paused) -> None:
    position = identify(paused.client, "u-401")
    r = paused.client.get(f"/v1/profiles/user_id:u-401?after={position}&wait_ms=10000")
    assert r.status_code == 401


_DIGITS = st.integers(min_value=-3, max_value=10**12).map(str)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    after=st.one_of(
        st.text(max_size=30),
        st.builds(lambda p, o: f"raw:{p}:{o}", _DIGITS, _DIGITS),
        st.from_regex(r"\Araw:[0-9]{1,2}:[0-9]{1,3}\Z"),
    ),
    wait_ms=st.one_of(
        st.none(),
        st.text(max_size=8),
        st.integers(min_value=-5, max_value=40).map(str),
        st.sampled_from(["10001", "1e3", "\u0663", " 5", "99999999999"]),
    ),
)
def test_no_after_or_wait_ms_is_a_server_error(
    paused: Paused, after: str, wait_ms: str | None
) -> None:
    identify(paused.client, "u-fuzz")  # so that some positions exist, and are not yet applied
    params = {"after": after} if wait_ms is None else {"after": after, "wait_ms": wait_ms}
    r = profile(paused.client, paused.token, "u-fuzz", **params)
    assert r.status_code in (200, 400, 404, 409), r.text
    event(f"answered {r.status_code}")
    assert isinstance(r.json().get("code", ""), str)
