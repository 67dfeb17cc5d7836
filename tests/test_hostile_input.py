"""Anything a write key can send, through a running `clew serve`: every request is answered
200 or with a JSON 4xx whose code docs/tracking-api.md lists, never a 5xx; and afterwards the
stages catch up, a normal identify still becomes a profile, `clew rebuild --check` still
finds the batch and speed layers agreeing, and a person who was there before the traffic can
still be deleted down to zero traces.

The requests are generated (Hypothesis, derandomized so that CI runs the same ones every
time): every Tracking API path, fields of the wrong JSON type, huge and negative numbers,
garbage timestamps, repeated message ids, nesting near the limit, text from every Unicode
plane, raw byte damage, gzip that lies, content types and write keys of every kind."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from _support import WRITE_KEY, ServeProcess, clew_bin, drained, lake_count, wait_for
from _tracking_api import BASIC, documented_refusals
from clew.background import free_port
from clew.cli import app
from clew.events import PATH_TYPES
from clew.nesting import MAX_DEPTH

pytestmark = pytest.mark.slow

REQUESTS = 1500

# A shopper who used the site before the hostile traffic and asks to be deleted after it.
GRACE = {"user_id": "grace-1906", "anonymous_id": "grace-phone", "email": "grace@shop.test"}
GRACE_IDS = [f"{t}:{v}" for t, v in GRACE.items()]
# A shopper who signs up after it.
HEDY = {"user_id": "hedy-1914", "email": "hedy@shop.test"}

# Identifiers the generated events share, so that their profiles merge.
SHARED_IDS = ["mallory-1", "mallory-2", "mallory-phone"]
SHARED_EMAILS = ["mallory@shop.test", "MALLORY@shop.test", "mallory@shop.test\x00"]
# Message ids the generated events share, so that some are duplicates of others.
MESSAGE_IDS = [f"hostile-{i}" for i in range(5)]


@dataclass(slots=True)
class Deployment:
    """A `clew serve` process, and what the hostile traffic got back from it."""

    serve: ServeProcess
    http: httpx.Client
    answers: Counter[str] = field(default_factory=Counter)

    @property
    def data_dir(self) -> Path:
        return self.serve.data_dir

    def cli(self, *args: str) -> tuple[int, str]:
        """Run ``clew ARGS`` on the deployment's data directory, in process."""
        result = CliRunner().invoke(app, [*args, "--data-dir", str(self.data_dir)])
        return result.exit_code, result.output

    def send(self, path: str, body: dict[str, Any]) -> None:
        r = self.http.post(path, json=body, headers={"Authorization": BASIC})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    subprocess.run(
        [clew_bin(), "sources", "create", "tests", "--write-key", WRITE_KEY,
         "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    serve = ServeProcess(data_dir, free_port())
    serve.start()
    http = httpx.Client(base_url=serve.url, timeout=30)
    d = Deployment(serve, http)
    try:
        d.send(
            "/v1/identify",
            {
                "userId": GRACE["user_id"],
                "anonymousId": GRACE["anonymous_id"],
                "traits": {"email": GRACE["email"], "name": "Grace"},
            },
        )
        d.send("/v1/track", {"userId": GRACE["user_id"], "event": "Order Completed",
                             "properties": {"revenue": 12.5}})  # fmt: skip
        d.send("/v1/page", {"anonymousId": GRACE["anonymous_id"], "name": "Home"})
        wait_for(lambda: _profiles_with(data_dir, GRACE["email"]) == 1, 60)
        yield d
    finally:
        http.close()
        serve.stop()


def _profiles_with(data_dir: Path, email: str) -> int:
    return lake_count(data_dir, "customer_profiles", f"email = '{email}'")


class Lit(str):
    """JSON text written into a body as it is: numbers beyond what Python's encoder writes."""


def _encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Lit):
        return value
    if isinstance(value, dict):
        members = (f"{_encode(k, ascii_only)}:{_encode(v, ascii_only)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def _nest(levels: int, leaf: Any, shape: list[bool]) -> Any:
    """``leaf`` inside ``levels`` objects and arrays (an object where ``shape`` says so)."""
    for as_object in shape[:levels] + [True] * (levels - len(shape)):
        leaf = {"k": leaf} if as_object else [leaf]
    return leaf


def _repeat(s: str, n: int) -> str:
    return (s or "x") * n


def rarely(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int = 10
) -> st.SearchStrategy[Any]:
    """``rare`` once in ``one_in`` draws, else ``common`` (``a | b`` draws each as often)."""
    return st.integers(1, one_in).flatmap(lambda i: rare if i == 1 else common)


long_text = st.builds(_repeat, st.text(min_size=1, max_size=3), st.integers(1000, 40_000))
texts = (
    st.text(max_size=12)
    | st.text(st.characters(min_codepoint=0x10000), max_size=6)
    | st.sampled_from(["", "\x00", "a\x00b", "\u202e", "\ufeff", "\U0010ffff", "null", "NaN"])
)
# Valid JSON numbers, many of them beyond what a 64-bit integer or a double holds.
numbers = rarely(
    st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False),
    st.integers(2**63 - 2, 2**64 + 2)
    | st.integers(-(2**64) - 2, -(2**63) + 2)
    | st.integers(2**64, 2**400)
    | st.sampled_from([1e308, -1e308, 5e-324, -0.0])
    | st.sampled_from([Lit("1e400"), Lit("-1e400"), Lit("9" * 5000), Lit("-0"), Lit("1E+2")]),
    one_in=5,
)
# What some encoders write for numbers that JSON does not have.
NOT_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity", "01", "1.", "0x10", "+1"]
keys = rarely(
    st.text(max_size=8) | st.sampled_from(["", "\x00", "$set", "a.b"]), long_text, one_in=200
)
scalars = st.none() | st.booleans() | numbers | texts
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
deep = st.builds(
    _nest, st.integers(MAX_DEPTH - 8, MAX_DEPTH + 4), scalars, st.lists(st.booleans(), max_size=8)
)
# Times as text: well formed (any year Python knows), or not a time at all.
times = rarely(
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda dt: dt.isoformat()),
    st.sampled_from(
        ["99999-01-01T00:00:00Z", "+275760-09-13T00:00:00.000Z", "-000001-01-01T00:00:00Z",
         "0000-00-00T00:00:00Z", "2024-02-30T25:61:61Z", "1970-01-01T00:00:00Z", "now", "",
         "2024-06-01T12:00:00+14:00", "2024-06-01 12:00:00", "1717243200000", "\x00"]
    ),
    one_in=3,
)  # fmt: skip
names = rarely(
    st.sampled_from(SHARED_IDS) | st.text(min_size=1, max_size=12) | texts, long_text, one_in=50
)
emails = st.sampled_from(SHARED_EMAILS) | texts
objects = rarely(
    st.dictionaries(keys, values, max_size=5)
    | st.fixed_dictionaries({"email": emails}, optional={"name": values, "phone": values}),
    deep,
    one_in=8,
)
EVENT_TYPES = sorted(set(PATH_TYPES.values()) - {"batch"})
# What each type needs besides an identity, for the validate stage to keep it.
_NEEDS = {"track": ("event",), "group": ("groupId",), "alias": ("previousId", "userId")}
_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt")
_IDENTITY_FIELDS = ("anonymousId", "userId", "previousId", "groupId")


def typed_events(kind: str | None) -> st.SearchStrategy[dict[str, Any]]:
    """An event of type ``kind`` (any, when ``None``) whose fields have the types the
    Tracking API asks for, holding hostile values: most pass validation and reach the lake,
    the profiles and the destinations.

    Some events also carry hostile times (year 1, garbage, far future): arriving in any order
    and claiming the same identifiers as other events for other user ids, they are what the
    speed layer repairs into event-time order (docs/identity.md, "Ordering"), so the rebuild
    check at the end tests that too."""
    optional = {
        "userId": names,
        "previousId": names,
        "groupId": names,
        "event": texts,
        "name": texts,
        "messageId": rarely(st.uuids().map(str), st.sampled_from(MESSAGE_IDS)),
        "traits": objects,
        "properties": objects,
        "context": st.fixed_dictionaries({}, optional={"traits": objects, "ip": texts}),
        "integrations": objects,
    }
    timed = {
        "event": texts,
        "name": texts,
        "properties": st.dictionaries(keys, values, max_size=5) | deep,
        **{f: times for f in _TIME_FIELDS},
    }

    def of_kind(k: str, with_times: bool) -> st.SearchStrategy[dict[str, Any]]:
        fields = {**optional, **timed} if with_times else optional
        ids = names
        needed = {
            f: (ids if f in _IDENTITY_FIELDS else names).filter(bool) for f in _NEEDS.get(k, ())
        }
        return st.fixed_dictionaries(
            {"type": st.just(k), "anonymousId": ids} | needed,
            optional={f: v for f, v in fields.items() if f not in needed},
        )

    kinds = st.just(kind) if kind else rarely(st.sampled_from(EVENT_TYPES), texts)
    return st.tuples(kinds, st.booleans()).flatmap(lambda kt: of_kind(*kt))


# An event with any JSON value in any field.
wild_events = st.dictionaries(
    st.sampled_from(["type", "userId", "anonymousId", "previousId", "groupId", "event",
                     "messageId", "timestamp", "sentAt", "traits", "properties", "context"])
    | keys,
    values,
    max_size=8,
)  # fmt: skip


def events(kind: str | None = None) -> st.SearchStrategy[Any]:
    """Mostly a typed event of ``kind``, else anything at all."""
    return rarely(typed_events(kind), wild_events | values, one_in=4)


@dataclass(frozen=True, slots=True)
class Request:
    """One request as sent; printed short, as bodies can be hundreds of kilobytes."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    tricks: tuple[str, ...]

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"Request({self.method} {self.path} {self.headers} tricks={self.tricks} "
            f"{len(self.body)} bytes: {body!r})"
        )


@functools.cache
def _gzip_bomb() -> bytes:
    """A few kilobytes of gzip that inflate to 50 MB."""
    return gzip.compress(b"0" * 50_000_000, compresslevel=9)


# Ways a request can be broken besides its events, each with the same weight as all of
# them together leave the request intact: most requests reach the pipeline.
FAULTS = [
    "wrong-basic", "bad-base64", "non-utf8-basic", "bearer", "body-and-wrong-basic",
    "writeKey-not-a-string", "no-write-key",
    "not-json-number", "bytes", "truncate", "bom", "empty", "binary", "not-an-object",
    "lone-surrogate", "trailing", "huge-body",
    "gzip-bomb", "invalid-gzip", "truncated-gzip", "plain-as-gzip", "deflate", "br",
    "gzip, gzip",
    "text/html", "multipart/form-data; boundary=x", "application/octet-stream",
    "application/json; charset=utf-16",
    "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "/v1/tracks", "/v1/",
]  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> Request:
    path = draw(st.sampled_from(sorted(PATH_TYPES)))
    fault = draw(st.sampled_from(["none"] * len(FAULTS)) | st.sampled_from(FAULTS))
    tricks = [fault] if fault != "none" else []
    body_value: Any
    if PATH_TYPES[path] == "batch":
        n = draw(rarely(st.integers(0, 8), st.sampled_from([2500, 2501])))
        batch_events = [draw(events()) for _ in range(min(n, 8))]
        if n > 8:
            batch_events += [{"type": "track", "event": "Bulk", "anonymousId": "bulk"}] * (n - 8)
        body_value = {"batch": draw(rarely(st.just(batch_events), values))}
        for key, strategy in (("context", objects | values), ("sentAt", texts | values)):
            if draw(st.booleans()):
                body_value[key] = draw(strategy)
        tricks.append(f"batch of {n}")
    else:
        body_value = draw(events(PATH_TYPES[path]))

    # How a client that gets it right authenticates, and how one that does not.
    headers: dict[str, str] = {}
    user = {"wrong-basic": "not-a-key", "body-and-wrong-basic": "not-a-key"}.get(fault, WRITE_KEY)
    password = draw(st.sampled_from(["", "", "secret"]))
    in_body = draw(st.booleans()) or fault == "body-and-wrong-basic"
    if fault == "bad-base64":
        headers["Authorization"] = "Basic !!not base64!!"
    elif fault == "non-utf8-basic":
        headers["Authorization"] = "Basic " + base64.b64encode(b"\xff\xfe:").decode()
    elif fault == "bearer":
        headers["Authorization"] = f"Bearer {WRITE_KEY}"
    elif fault in ("writeKey-not-a-string", "no-write-key"):
        in_body = False
    elif not in_body or user != WRITE_KEY or draw(st.booleans()):
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()
        ).decode("ascii")
    if isinstance(body_value, dict) and in_body:
        body_value["writeKey"] = WRITE_KEY
    elif isinstance(body_value, dict) and fault == "writeKey-not-a-string":
        body_value["writeKey"] = draw(values.filter(lambda v: not isinstance(v, str)))

    body = _encode(body_value, ascii_only=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if fault == "not-json-number":
        body = b'{"n":' + draw(st.sampled_from(NOT_JSON_NUMBERS)).encode() + b"," + body[1:]
    elif fault == "bytes":
        at = draw(st.integers(0, len(body)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
        body = body[:at] + bad + body[at:]
    elif fault == "truncate":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif fault == "bom":
        body = b"\xef\xbb\xbf" + body
    elif fault == "empty":
        body = b""
    elif fault == "binary":
        body = draw(st.binary(max_size=64))
    elif fault == "not-an-object":
        body = _encode(draw(scalars | st.lists(values, max_size=3)), True).encode()
    elif fault == "lone-surrogate":
        body = b'{"x":"' + draw(st.sampled_from([b"\\ud800", b"\\udfff"])) + b'",' + body[1:]
    elif fault == "trailing":
        body = body + draw(st.sampled_from([b"}", b" x", b"\x00", b"{}"]))
    elif fault == "huge-body":
        body = b'{"padding":"' + b"p" * 600_000 + b'",' + body[1:]

    if fault == "gzip-bomb":
        body = _gzip_bomb()
    elif fault == "invalid-gzip":
        body = b"\x1f\x8b" + draw(st.binary(max_size=32))
    elif fault == "truncated-gzip":
        packed = gzip.compress(body)
        body = packed[: draw(st.integers(0, len(packed) - 1))]
    elif fault == "none" and draw(st.integers(0, 4)) == 0:
        tricks.append("gzip")
        body = gzip.compress(body)
    if "gzip" in fault or "gzip" in tricks:
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "GZIP", "Gzip"]))
    if fault in ("deflate", "br", "gzip, gzip"):
        headers["Content-Encoding"] = fault

    if "/" in fault and not fault.startswith("/"):
        headers["Content-Type"] = fault
    else:
        content_type = draw(
            st.sampled_from(
                ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                 "text/plain", "application/x-www-form-urlencoded", None]
            )
        )  # fmt: skip
        if content_type is not None:
            headers["Content-Type"] = content_type

    method = fault if fault.isupper() else "POST"
    route = fault if fault.startswith("/") else f"/v1/{path}" + draw(st.sampled_from(["", "/"]))
    return Request(method, route, headers, body, tuple(tricks))


def _answer(r: httpx.Response) -> str:
    """What the response says: ``200``, ``204`` or ``<status> <code>``; fails the test if
    it is a 5xx, or a 4xx that is not JSON with a code documented for its status."""
    assert r.status_code < 500, r.text
    if r.status_code == 204:
        return "204"
    assert r.headers["content-type"] == "application/json", r.headers
    doc = r.json()
    if r.status_code == 200:
        assert doc == {"success": True}
        return "200"
    documented = documented_refusals()
    assert r.status_code in documented, (r.status_code, doc)
    assert set(doc) == {"code", "message"} and doc["message"], doc
    assert doc["code"] in documented[r.status_code], doc
    return f"{r.status_code} {doc['code']}"


@settings(
    max_examples=REQUESTS,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def test_every_request_gets_200_or_a_documented_json_4xx(
    deployment: Deployment, request: Request
) -> None:
    r = deployment.http.request(
        request.method, request.path, content=request.body, headers=request.headers
    )
    answer = _answer(r)
    event(answer)
    deployment.answers[answer] += 1


def test_after_the_traffic_clew_catches_up_serves_rebuilds_and_deletes(
    deployment: Deployment,
) -> None:
    if sum(deployment.answers.values()) < REQUESTS:
        pytest.skip("runs after test_every_request_gets_200_or_a_documented_json_4xx")
    # The traffic reached the pipeline: it is not all refused at the door.
    assert deployment.answers["200"] >= REQUESTS // 5, deployment.answers

    url = deployment.serve.url
    wait_for(lambda: drained(url), timeout_s=180, interval_s=0.5)
    health = deployment.http.get("/health").json()
    assert health["status"] in ("ok", "degraded"), health
    assert all(stage["alive"] for stage in health["stages"].values()), health
    # Hostile events went all the way through: stored in the lake, not only dead-lettered.
    assert lake_count(deployment.data_dir) >= REQUESTS // 10

    deployment.send("/v1/identify", {"userId": HEDY["user_id"], "traits": {"email": HEDY["email"]}})
    wait_for(lambda: _profiles_with(deployment.data_dir, HEDY["email"]) == 1, 60)
    wait_for(lambda: drained(url), timeout_s=60, interval_s=0.5)

    code, output = deployment.cli("rebuild", "--dry-run", "--check")
    assert code == 0, output
    assert "the batch and speed layers agree" in output

    code, output = deployment.cli(
        "privacy", "request", "suppress_with_delete", f"email:{GRACE['email']}",
        "--wait", "--timeout", "120", "--json",
    )  # fmt: skip
    assert code == 0, output
    assert json.loads(output[output.index("{") :])["status"] == "finished", output
    code, output = deployment.cli("privacy", "verify", *GRACE_IDS)
    assert code == 0, output
    assert "zero traces" in output
    assert _profiles_with(deployment.data_dir, GRACE["email"]) == 0
    assert _profiles_with(deployment.data_dir, HEDY["email"]) == 1
