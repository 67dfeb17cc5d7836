"""The Tracking API over real HTTP, checked against docs/tracking-api.md: every refusal has its
status and JSON error body and loses nothing else; per-event problems land in the dead-letter
queue; accepted events are enriched as documented."""

from __future__ import annotations

import base64
import gzip
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from _support import WRITE_KEY, lake_count, make_settings, wait_for
from clew.background import BackgroundServer
from clew.config import Limits
from clew.lake.query import Lake
from clew.nesting import MAX_DEPTH

BASIC = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
GZIP = {"Content-Encoding": "gzip"}
KB = 1024


def rows(server: BackgroundServer, sql: str) -> list[tuple[Any, ...]]:
    return Lake(server.settings.lake_path).sql(sql).rows


def count(server: BackgroundServer, table: str = "events", where: str = "true") -> int:
    return lake_count(server.settings.data_dir, table, where)


def wait_landed(server: BackgroundServer, *message_ids: str, table: str = "events") -> None:
    where = "message_id IN (" + ", ".join(f"'{m}'" for m in message_ids) + ")"
    wait_for(lambda: count(server, table, where) == len(message_ids))


def raw_records(server: BackgroundServer) -> int:
    """Requests appended to the log: a refused request must not add one."""
    return sum(server.clew.log.end_offsets("raw").values())


def new_id() -> str:
    return uuid.uuid4().hex


def event(message_id: str | None = None, **fields: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "track", "event": "Order Completed", "userId": "u-1"}
    if message_id is not None:
        ev["messageId"] = message_id
    return {**ev, **fields}


def batch(*events: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"batch": list(events), **extra})


def client(server: BackgroundServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=10)


def assert_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def assert_success(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"success": True}
    assert len(r.content) <= 32


def assert_nothing_else_lost(server: BackgroundServer, c: httpx.Client, raw_before: int) -> None:
    """A good request on the same connection is stored and reaches the lake, and the refused
    one left nothing in the log."""
    assert raw_records(server) == raw_before
    mid = new_id()
    assert_success(c.post("/v1/batch", content=batch(event(mid)), headers=BASIC))
    wait_landed(server, mid)
    assert raw_records(server) == raw_before + 1


# -- refusals --------------------------------------------------------------------------------


MULTIPART = b'--x\r\nContent-Disposition: form-data; name="batch"\r\n\r\n[]\r\n--x--'


def _huge_event(mid: str, size: int) -> dict[str, Any]:
    return event(mid, properties={"blob": "x" * size})


def nested(levels: int) -> Any:
    """A JSON value ``levels`` objects deep (``{}`` is one)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


# The body's root, `batch`, the event and its `traits` are 4 levels; the traits add the rest.
TOO_DEEP_BATCH = batch(event("r-1", traits=nested(MAX_DEPTH - 2)))
DEEPEST_BATCH = batch(event("r-1", traits=nested(MAX_DEPTH - 3)))


REFUSALS = [
    pytest.param(
        "POST", "/v1/batch", b'{"batch": [{"type": "track"', BASIC, 400, "invalid_json", None,
        id="invalid-json",
    ),
    pytest.param(
        "POST", "/v1/track", b"", BASIC, 400, "invalid_json", None, id="empty-body",
    ),
    pytest.param(
        "POST", "/v1/batch", orjson.dumps([event("r-1")]), BASIC, 400, "invalid_json", None,
        id="body-is-an-array",
    ),
    pytest.param(
        "POST", "/v1/track", b'"Order Completed"', BASIC, 400, "invalid_json", None,
        id="body-is-a-string",
    ),
    pytest.param(
        "POST", "/v1/batch", TOO_DEEP_BATCH, BASIC, 400, "invalid_json", f"{MAX_DEPTH} levels",
        id="nested-too-deep",
    ),
    pytest.param(
        "POST", "/v1/identify", orjson.dumps(event("r-1", type="identify", traits=nested(253))),
        BASIC, 400, "invalid_json", f"{MAX_DEPTH} levels", id="body-254-deep",
    ),
    pytest.param(
        "POST", "/v1/track", b"[" * 5000 + b"]" * 5000, BASIC, 400, "invalid_json",
        f"{MAX_DEPTH} levels", id="deeper-than-the-parser-goes",
    ),
    pytest.param(
        "POST", "/v1/batch", gzip.compress(TOO_DEEP_BATCH), {**BASIC, **GZIP}, 400,
        "invalid_json", f"{MAX_DEPTH} levels", id="nested-too-deep-gzip",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1")).replace(b'"u-1"', b'"u-\xff"'), BASIC, 400,
        "invalid_json", "UTF-8", id="invalid-utf8-in-an-event",
    ),
    pytest.param(
        "POST", "/v1/batch", b'{"writeKey": "\xff", "batch": []}', {}, 400, "invalid_json",
        "UTF-8", id="invalid-utf8-in-the-write-key",
    ),
    pytest.param(
        "POST", "/v1/track", orjson.dumps(event("r-1")).replace(b'"u-1"', b'"u-\\ud800"'),
        BASIC, 400, "invalid_json", "lone surrogate", id="lone-surrogate-in-an-event",
    ),
    pytest.param(
        "POST", "/v1/batch", b'{"writeKey": "\\udc00", "batch": []}', {}, 400, "invalid_json",
        "lone surrogate", id="lone-surrogate-in-the-write-key",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1")),
        {"Authorization": "Basic " + base64.b64encode(b"\xffkey:").decode()}, 401,
        "invalid_write_key", None, id="invalid-utf8-in-basic-auth",
    ),
    pytest.param(
        "POST", "/v1/batch", orjson.dumps({"batch": event("r-1")}), BASIC, 400, "invalid_batch",
        None, id="batch-is-an-object",
    ),
    pytest.param(
        "POST", "/v1/batch", orjson.dumps({"events": [event("r-1")]}), BASIC, 400,
        "invalid_batch", None, id="batch-is-missing",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(*[event(f"r-{i}") for i in range(2501)]), BASIC, 400,
        "batch_too_large", "2500", id="batch-too-large",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-0"), _huge_event("r-1", 33 * KB)), BASIC, 400,
        "event_too_large", "event 1", id="event-too-large-in-batch",
    ),
    pytest.param(
        "POST", "/v1/track", orjson.dumps(_huge_event("r-1", 33 * KB)), BASIC, 400,
        "event_too_large", None, id="event-too-large",
    ),
    pytest.param(
        # Every event is under 32 KB; the body as a whole is over 500 KB.
        "POST", "/v1/batch", batch(*[_huge_event(f"r-{i}", 30 * KB) for i in range(18)]), BASIC,
        400, "request_too_large", None, id="request-too-large",
    ),
    pytest.param(
        "POST", "/v1/batch", b"\x1f\x8b\x08\x00 this is not deflate data", {**BASIC, **GZIP},
        400, "invalid_gzip", None, id="corrupt-gzip",
    ),
    pytest.param(
        "POST", "/v1/batch", gzip.compress(batch(*[event(f"r-{i}") for i in range(50)]))[:200],
        {**BASIC, **GZIP}, 400, "invalid_gzip", None, id="truncated-gzip",
    ),
    pytest.param(
        # Two gzip members, each inflating to 300 KB: the 500 KB cap holds for their sum.
        "POST", "/v1/batch", gzip.compress(b" " * 300 * KB) + gzip.compress(b" " * 300 * KB),
        {**BASIC, **GZIP}, 400, "request_too_large", None, id="gzip-members-over-cap",
    ),
    pytest.param(
        "POST", "/v1/batch", gzip.compress(batch(event("r-1"))) + b"\x1f\x8b\x08 not deflate",
        {**BASIC, **GZIP}, 400, "invalid_gzip", None, id="corrupt-second-gzip-member",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1")), {**BASIC, "Content-Encoding": "br"}, 415,
        "unsupported_encoding", None, id="brotli",
    ),
    pytest.param(
        "POST", "/v1/batch", MULTIPART,
        {**BASIC, "Content-Type": "multipart/form-data; boundary=x"}, 415,
        "unsupported_media_type", None, id="multipart",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1")), {}, 401, "missing_write_key", None,
        id="missing-write-key",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1"), writeKey=""), {}, 401, "missing_write_key",
        None, id="empty-write-key",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1")),
        {"Authorization": "Basic " + base64.b64encode(b"not-a-source-key:").decode()}, 401,
        "invalid_write_key", None, id="unknown-write-key-basic",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1")), {"Authorization": "Basic !!not-base64!!"}, 401,
        "invalid_write_key", None, id="malformed-basic-auth",
    ),
    pytest.param(
        "POST", "/v1/batch", batch(event("r-1"), writeKey="not-a-source-key"), {}, 401,
        "invalid_write_key", None, id="unknown-write-key-body",
    ),
    pytest.param(
        "GET", "/v1/track", b"", BASIC, 405, "method_not_allowed", None, id="GET",
    ),
    pytest.param(
        "PUT", "/v1/batch", batch(event("r-1")), BASIC, 405, "method_not_allowed", None,
        id="PUT",
    ),
    pytest.param(
        "POST", "/v1/purchase", orjson.dumps(event("r-1")), BASIC, 404, "not_found", None,
        id="unknown-v1-path",
    ),
    pytest.param(
        "GET", "/no/such/page", b"", {}, 404, "not_found", None, id="unknown-path",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code", "in_message"), REFUSALS
)
def test_a_bad_request_is_refused_with_its_code_and_nothing_else_is_lost(
    server: BackgroundServer,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    in_message: str | None,
) -> None:
    with client(server) as c:
        r = c.request(method, path, content=body, headers=headers)
        message = assert_error(r, status, code)
        if in_message is not None:
            assert in_message in message
        assert_nothing_else_lost(server, c, raw_before=0)
    if path.startswith("/v1/") and status != 404:
        assert server.clew.collector.counters[f"refused_{code}"] == 1


def gzip_bomb(inflated_bytes: int) -> bytes:
    """Zeros, gzip-compressed chunk by chunk so the test itself never holds them."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [deflate.compress(zeros) for _ in range(inflated_bytes >> 20)]
    parts.append(deflate.flush())
    return b"".join(parts)


class PeakRss:
    """Samples this process's resident memory (the server runs in it) every millisecond."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def test_a_gzip_bomb_is_refused_without_being_inflated(server: BackgroundServer) -> None:
    bomb = gzip_bomb(50 * 1024 * KB)
    assert len(bomb) < 100 * KB
    with client(server) as c:
        # Warm the request path and let the lake flush settle before measuring.
        warm = new_id()
        assert_success(c.post("/v1/batch", content=batch(event(warm)), headers=BASIC))
        wait_landed(server, warm)
        # Not inflating it is shown by the memory it did not take, not by how long it took.
        with PeakRss() as rss:
            r = c.post("/v1/batch", content=bomb, headers={**BASIC, **GZIP})
        assert_error(r, 400, "request_too_large")
        assert rss.peak - rss.baseline < 20 * 1024 * KB, (
            f"RSS grew by {(rss.peak - rss.baseline) >> 20} MB while refusing a 50 MB gzip bomb"
        )
        assert_nothing_else_lost(server, c, raw_before=1)


# -- accepted requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "path", "content_type"),
    [
        ("basic", "/v1/batch", "application/json"),
        ("body", "/v1/batch", None),
        ("basic", "/v1/import", "application/json; charset=utf-8"),
        ("body", "/v1/b", "application/x-www-form-urlencoded"),  # curl's default
    ],
    ids=["basic-json", "body-no-content-type", "import-charset", "curl-form"],
)
def test_success_is_200_with_a_small_json_body_once_the_request_is_in_the_log(
    server: BackgroundServer, auth: str, path: str, content_type: str | None
) -> None:
    mid = new_id()
    headers = {"Content-Type": content_type} if content_type else {}
    if auth == "basic":
        r = httpx.post(server.url + path, content=batch(event(mid)), headers={**BASIC, **headers})
    else:
        body = batch(event(mid), writeKey=WRITE_KEY)
        r = httpx.post(server.url + path, content=body, headers=headers)
    assert_success(r)
    assert raw_records(server) == 1
    wait_landed(server, mid)


def sized_event(message_id: str, size: int) -> dict[str, Any]:
    """A track event whose JSON is exactly ``size`` bytes."""
    base = len(orjson.dumps(_huge_event(message_id, 0)))
    ev = _huge_event(message_id, size - base)
    assert len(orjson.dumps(ev)) == size
    return ev


def test_the_limits_are_inclusive(server: BackgroundServer) -> None:
    full_batch = [sized_event(new_id(), 32 * KB)] + [event(new_id()) for _ in range(2499)]
    body = batch(*full_batch)
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))

    def body_of(n_bytes: int) -> bytes:
        events = [sized_event(new_id(), 30 * KB) for _ in range(16)]
        padding = n_bytes - len(batch(*events, pad=""))
        body = batch(*events, pad="x" * padding)
        assert len(body) == n_bytes
        return body

    # Exactly MAX_DEPTH levels deep.
    assert_success(httpx.post(server.url + "/v1/batch", content=DEEPEST_BATCH, headers=BASIC))

    at_cap = body_of(500 * KB)
    assert_success(httpx.post(server.url + "/v1/batch", content=at_cap, headers=BASIC))
    inflates_to_cap = gzip.compress(body_of(500 * KB))
    r = httpx.post(server.url + "/v1/batch", content=inflates_to_cap, headers={**BASIC, **GZIP})
    assert_success(r)
    wait_for(lambda: count(server) == 2500 + 1 + 16 + 16)


def test_a_valid_basic_auth_key_wins_over_the_body(server: BackgroundServer) -> None:
    mid = new_id()
    body = batch(event(mid), writeKey="not-a-source-key")
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))
    wait_landed(server, mid)


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/t"])
def test_a_cors_preflight_is_answered(server: BackgroundServer, path: str) -> None:
    origin = "https://shop.example"
    r = httpx.options(
        server.url + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == origin
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed

    bare = httpx.options(server.url + path, headers={"Origin": origin})
    allowed = bare.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed


def test_responses_to_a_browser_carry_its_origin(server: BackgroundServer) -> None:
    origin = "https://shop.example"
    mid = new_id()
    ok = httpx.post(
        server.url + "/v1/batch", content=batch(event(mid)), headers={**BASIC, "Origin": origin}
    )
    assert_success(ok)
    assert ok.headers["access-control-allow-origin"] == origin
    refused = httpx.post(server.url + "/v1/batch", content=b"{", headers={"Origin": origin})
    assert_error(refused, 400, "invalid_json")
    assert refused.headers["access-control-allow-origin"] == origin
    wait_landed(server, mid)


def test_send_beacon_text_plain_bodies_are_accepted_on_the_short_paths(
    server: BackgroundServer,
) -> None:
    ids = {p: new_id() for p in ("t", "p", "i", "b")}
    bodies = {
        "t": {"event": "Clicked", "anonymousId": "a-1", "messageId": ids["t"]},
        "p": {"name": "Home", "anonymousId": "a-1", "messageId": ids["p"]},
        "i": {"userId": "u-1", "traits": {"plan": "pro"}, "messageId": ids["i"]},
        "b": {
            "batch": [{"type": "screen", "name": "Cart", "userId": "u-1", "messageId": ids["b"]}]
        },
    }
    beacon = {"Content-Type": "text/plain;charset=UTF-8"}
    with client(server) as c:
        for path, body in bodies.items():
            r = c.post(
                f"/v1/{path}", content=orjson.dumps({**body, "writeKey": WRITE_KEY}), headers=beacon
            )
            assert_success(r)
    wait_landed(server, *ids.values())
    types = dict(rows(server, "SELECT message_id, type FROM events"))
    assert types == {ids["t"]: "track", ids["p"]: "page", ids["i"]: "identify", ids["b"]: "screen"}


def test_rudderstack_beacon_batches_carry_the_write_key_in_the_query(
    server: BackgroundServer,
) -> None:
    """RudderStack's JS SDK with ``useBeacon`` posts ``{"batch": […], "sentAt": …}`` as
    text/plain to ``/beacon/v1/batch?writeKey=KEY``: a beacon sends no header. The query's key
    is read on that path only."""
    mid = new_id()
    body = orjson.dumps({"batch": [event(mid)], "sentAt": "2026-01-01T00:00:00.000Z"})
    beacon = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://shop.test"}
    with client(server) as c:
        r = c.post(f"/beacon/v1/batch?writeKey={WRITE_KEY}", content=body, headers=beacon)
        assert_success(r)
        assert r.headers["access-control-allow-origin"] == "http://shop.test"
        refused = {
            "/beacon/v1/batch": "missing_write_key",
            "/beacon/v1/batch?writeKey=nobody-at-all": "invalid_write_key",
            f"/v1/batch?writeKey={WRITE_KEY}": "missing_write_key",
        }
        for path, code in refused.items():
            r = c.post(path, content=body, headers=beacon)
            assert (r.status_code, r.json()["code"]) == (401, code), path
    wait_landed(server, mid)


def test_a_gzip_body_is_accepted(server: BackgroundServer) -> None:
    ids = [new_id(), new_id()]
    body = gzip.compress(batch(*[event(m) for m in ids]))
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers={**BASIC, **GZIP}))
    wait_landed(server, *ids)


def test_a_gzip_body_of_concatenated_members_is_accepted(server: BackgroundServer) -> None:
    ids = [new_id(), new_id()]
    body = batch(*[event(m) for m in ids])
    middle = len(body) // 2
    # What `cat a.gz b.gz` or a streaming compressor that restarts produces (RFC 1952 §2.2).
    members = gzip.compress(body[:middle]) + gzip.compress(body[middle:])
    r = httpx.post(server.url + "/v1/batch", content=members, headers={**BASIC, **GZIP})
    assert_success(r)
    wait_landed(server, *ids)


def test_json_null_in_optional_fields_is_accepted(server: BackgroundServer) -> None:
    in_batch, single = new_id(), new_id()
    nulls = {"userId": None, "anonymousId": "a-1", "properties": None, "context": None}
    body = batch(
        event(in_batch, **nulls, timestamp=None, integrations=None, traits=None),
        context=None,
        integrations=None,
        sentAt=None,
    )
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))
    one = orjson.dumps(event(single, **nulls, timestamp=None, sentAt=None, writeKey=WRITE_KEY))
    assert_success(httpx.post(server.url + "/v1/track", content=one))
    wait_landed(server, in_batch, single)
    got = rows(
        server,
        "SELECT user_id, anonymous_id, properties, context, timestamp = received_at FROM events",
    )
    assert got == [(None, "a-1", "{}", "{}", True)] * 2
    assert count(server, "dlq") == 0


@pytest.fixture
def overloaded_server(tmp_path: Path) -> Iterator[BackgroundServer]:
    """A server that may not have any request waiting for a durable append."""
    settings = make_settings(tmp_path / "data", limits=Limits(max_pending_appends=0))
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        yield srv


def test_an_overloaded_collector_answers_503_with_retry_after(
    overloaded_server: BackgroundServer,
) -> None:
    r = httpx.post(overloaded_server.url + "/v1/batch", content=batch(event()), headers=BASIC)
    assert_error(r, 503, "overloaded")
    assert int(r.headers["retry-after"]) >= 1
    assert raw_records(overloaded_server) == 0


# -- per-event problems ----------------------------------------------------------------------


def test_bad_events_go_to_the_dlq_verbatim_and_do_not_fail_the_request(
    server: BackgroundServer,
) -> None:
    good = b'{"type":"track","event":"Signed Up","userId":"u-1","messageId":"dlq-good"}'
    pv = "protocol_violation"
    bad = {
        b'{ "type": "track",  "event": "Zo\xc3\xab", "messageId": "dlq-1" }': "no_identity",
        b'{"type":"purchase","event":"Paid","userId":"u","messageId":"dlq-2"}': pv,
        b'{"type":"track","event":"Paid","userId":"u","properties":"caf\\u00e9"}': pv,
        b'[ "not", "an", "object" ]': pv,
        b'{"type":"track","event":"Paid","userId":"u","timestamp":"last Tuesday"}': pv,
        b'{"type":"track","event":"Paid","userId":"u","timestamp":1700000000}': pv,
    }
    events = b",\n  ".join([good, *bad])
    body = b'{"batch": [\n  ' + events + b'\n], "writeKey": "' + WRITE_KEY.encode() + b'"}'

    assert_success(httpx.post(server.url + "/v1/batch", content=body))

    wait_for(lambda: count(server, "dlq") == len(bad))
    wait_landed(server, "dlq-good")
    assert count(server, "events") == 1
    dead = rows(server, 'SELECT "index", reason, payload, message FROM dlq ORDER BY "index"')
    assert [(i, reason) for i, reason, _, _ in dead] == [
        (i, reason) for i, reason in enumerate(bad.values(), start=1)
    ]
    for (_, _, payload, message), original in zip(dead, bad, strict=True):
        assert payload.encode() == original
        assert message


def test_an_unreadable_event_is_dead_lettered_alone(server: BackgroundServer) -> None:
    # The collector's scan accepts a number out of range; only the validate stage finds it
    # cannot read it. (Text that is not UTF-8 is refused by the collector: see REFUSALS.)
    bad_event = b'{"type":"track","event":"Paid","userId":"u","properties":{"amount":1e400}}'
    payload = bad_event.decode()
    mid = new_id()
    body = b'{"batch": [' + orjson.dumps(event(mid)) + b", " + bad_event + b"]}"
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))
    wait_landed(server, mid)
    wait_for(lambda: count(server, "dlq") == 1)
    # docs/tracking-api.md lists no `invalid_json` dead-letter reason (see the closing note).
    assert rows(server, 'SELECT "index", reason, payload FROM dlq') == [
        (1, "invalid_json", payload)
    ]


# -- enrichment ------------------------------------------------------------------------------


def test_a_missing_message_id_is_assigned_a_uuid(server: BackgroundServer) -> None:
    user = new_id()
    body = batch(event(userId=user), event(userId=user), event(userId=user, messageId=None))
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))
    wait_for(lambda: count(server, where=f"user_id = '{user}'") == 3)
    ids = [m for (m,) in rows(server, f"SELECT message_id FROM events WHERE user_id = '{user}'")]
    assert len(set(ids)) == 3
    for mid in ids:
        assert str(uuid.UUID(mid)) == mid


def test_received_at_is_stamped(server: BackgroundServer) -> None:
    mid = new_id()
    before = datetime.now(UTC)
    body = batch(event(mid, receivedAt="2001-01-01T00:00:00Z"))
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))
    after = datetime.now(UTC)
    wait_landed(server, mid)
    [(received_at,)] = rows(server, f"SELECT received_at FROM events WHERE message_id = '{mid}'")
    assert before - timedelta(milliseconds=1) <= received_at <= after


def test_batch_context_and_integrations_are_merged_under_each_events_own(
    server: BackgroundServer,
) -> None:
    own, bare = new_id(), new_id()
    body = batch(
        event(own, context={"ip": "2.2.2.2", "locale": "fr"}, integrations={"Mixpanel": False}),
        event(bare),
        context={"library": {"name": "analytics-python"}, "ip": "1.1.1.1"},
        integrations={"All": False, "Mixpanel": True},
    )
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))
    wait_landed(server, own, bare)
    got = {
        m: (orjson.loads(ctx), orjson.loads(integ))
        for m, ctx, integ in rows(server, "SELECT message_id, context, integrations FROM events")
    }
    assert got[own] == (
        {"library": {"name": "analytics-python"}, "ip": "2.2.2.2", "locale": "fr"},
        {"All": False, "Mixpanel": False},
    )
    assert got[bare] == (
        {"library": {"name": "analytics-python"}, "ip": "1.1.1.1"},
        {"All": False, "Mixpanel": True},
    )


def test_clock_skew_is_corrected_with_the_events_own_sent_at_over_the_batchs(
    server: BackgroundServer,
) -> None:
    own, from_batch, original, untimed, unsent = (new_id() for _ in range(5))
    body = batch(
        event(own, timestamp="2020-01-01T00:00:00.000Z", sentAt="2020-01-01T00:00:05.000Z"),
        event(from_batch, timestamp="2020-01-01T00:00:00.000Z"),
        event(original, originalTimestamp="2020-01-01T00:00:07.500Z"),
        event(untimed),
        sentAt="2020-01-01T00:00:10.000Z",
    )
    assert_success(httpx.post(server.url + "/v1/batch", content=body, headers=BASIC))
    single = orjson.dumps(event(unsent, timestamp="2025-06-01T12:00:00.123+02:00"))
    assert_success(httpx.post(server.url + "/v1/track", content=single, headers=BASIC))
    wait_landed(server, own, from_batch, original, untimed, unsent)

    got = {
        m: (ts, orig, sent, received)
        for m, ts, orig, sent, received in rows(
            server,
            "SELECT message_id, timestamp, original_timestamp, sent_at, received_at FROM events",
        )
    }

    def utc(iso: str) -> datetime:
        return datetime.fromisoformat(iso)

    ts, orig, sent, received = got[own]
    assert (orig, sent) == (utc("2020-01-01T00:00:00Z"), utc("2020-01-01T00:00:05Z"))
    assert ts == received - timedelta(seconds=5)
    ts, orig, sent, received = got[from_batch]
    assert (orig, sent) == (utc("2020-01-01T00:00:00Z"), utc("2020-01-01T00:00:10Z"))
    assert ts == received - timedelta(seconds=10)
    ts, orig, sent, received = got[original]
    assert orig == utc("2020-01-01T00:00:07.500Z")
    assert ts == received - timedelta(seconds=2.5)
    ts, orig, sent, received = got[untimed]
    assert orig is None and ts == received
    ts, orig, sent, received = got[unsent]
    assert sent is None
    assert ts == orig == utc("2025-06-01T10:00:00.123Z")


def test_the_same_message_id_in_two_requests_lands_once(server: BackgroundServer) -> None:
    mid, marker = new_id(), new_id()
    first = batch(event(mid, properties={"copy": 1}))
    second = batch(event(mid, properties={"copy": 2}), event(marker))
    with client(server) as c:
        assert_success(c.post("/v1/batch", content=first, headers=BASIC))
        assert_success(c.post("/v1/batch", content=second, headers=BASIC))
    wait_landed(server, marker)
    # The two requests may sit on different raw partitions, which the validate stage reads
    # in no fixed order: one copy lands, whichever it read first.
    landed = rows(server, f"SELECT properties FROM events WHERE message_id = '{mid}'")
    assert landed in ([('{"copy":1}',)], [('{"copy":2}',)]), landed
    duplicates = 'clew_validate_events_total{outcome="duplicates"} 1'
    wait_for(lambda: duplicates in httpx.get(server.url + "/metrics").text)
    assert count(server, "dlq") == 0
