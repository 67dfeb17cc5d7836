"""The collector's answer to any body, in process: 200, or a JSON 4xx with a code listed in
docs/tracking-api.md, never a 500; and what it accepts is UTF-8 text at most MAX_DEPTH deep,
which the validate stage reads without failing."""

from __future__ import annotations

import base64
import gzip
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.exceptions import StarletteDeprecationWarning

from _support import WRITE_KEY, make_settings
from clew.collector.process import CollectorProcess
from clew.dedup import DedupIndex
from clew.events import PATH_TYPES
from clew.nesting import MAX_DEPTH
from clew.stages.validate import ValidateStage
from clew.topics import RAW_TOPIC

with warnings.catch_warnings():
    # Starlette asks for httpx2 instead of httpx; the test client drives the app alike.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

# Every 4xx code docs/tracking-api.md lists for a POST to a Tracking API path.
DOCUMENTED = {
    400: {
        "invalid_json",
        "invalid_batch",
        "event_too_large",
        "request_too_large",
        "batch_too_large",
        "invalid_gzip",
    },
    401: {"missing_write_key", "invalid_write_key"},
    415: {"unsupported_media_type", "unsupported_encoding"},
}
BASIC = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


class Edge:
    """A collector process on a fresh data directory, with a validate stage behind it."""

    def __init__(self, data_dir: Path) -> None:
        self.process = CollectorProcess(make_settings(data_dir))
        self.process.catalog.create_source("tests", WRITE_KEY)
        self.client = TestClient(self.process.app)
        self.dedup = DedupIndex(data_dir / "dedup.db")
        self.stage = ValidateStage(self.dedup)
        self.consumer = self.process.log.consumer(self.stage.group, [RAW_TOPIC])

    def validate_all(self) -> int:
        """Run the validate stage over every request stored so far; the events it wrote."""
        before = self.stage.counters["events"]
        while records := self.consumer.poll(max_records=500, timeout_s=0.05):
            self.stage.handle(records, self.consumer)
        return self.stage.counters["events"] - before

    def close(self) -> None:
        self.consumer.close()
        self.dedup.close()
        self.client.close()
        self.process.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    e = Edge(tmp_path_factory.mktemp("edge"))
    yield e
    e.close()


def depth(body: bytes) -> int | None:
    """How deep the JSON ``body`` nests (Python's own parser: far past the limit), or
    ``None`` when it is not JSON Python reads."""
    try:
        stack = [(json.loads(body), 0)]
    except RecursionError:
        return 10_000
    except ValueError:
        return None
    deepest = 0
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in children)
    return deepest


def is_text(body: bytes) -> bool:
    """Valid UTF-8 whose JSON strings hold no lone surrogate (Python's parser keeps them)."""
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode()
    except (UnicodeError, ValueError):
        return False
    except RecursionError:
        return body.isascii() and b"\\u" not in body
    return True


def dumps(value: Any) -> bytes:
    """JSON as an SDK may write it: any integer, and NaN or Infinity (not JSON) as written."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page"]), "userId": st.text(max_size=8)},
    optional={"event": st.text(max_size=8), "traits": values, "properties": values},
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A path and a body: a plausible request, often broken in one of the ways SDKs and
    attackers break them."""
    path = draw(st.sampled_from(sorted(PATH_TYPES)))
    event = draw(events)
    body = dumps({"batch": [event]} if PATH_TYPES[path] == "batch" else event)
    trick = draw(
        st.sampled_from(["none", "nest", "bytes", "surrogate", "escape", "truncate", "value"])
    )
    if trick == "nest":
        # Wrap a member in objects and arrays, up to far past the parser's own limit.
        levels = draw(st.integers(1, 1200) | st.integers(MAX_DEPTH - 6, MAX_DEPTH + 2))
        opens = b"".join(draw(st.sampled_from([b'{"k":', b"["])) for _ in range(levels))
        closes = opens[::-1].replace(b':"k"{', b"}").replace(b"[", b"]")
        body = body[:-1] + b',"deep":' + opens + b"1" + closes + b"}"
    elif trick == "bytes":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at:]
    elif trick == "surrogate":
        escape = draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\\\ud800"]))
        body = b'{"x' + escape + b'":1,' + body[1:]
    elif trick == "escape":
        body = body.replace(b'"userId":"', b'"userId":"' + draw(st.sampled_from(
            [b"\\", b"\\\\", b'\\"', b"[{", b"\\u00e9", b"\xc3\xa9"]
        )), 1)  # fmt: skip
    elif trick == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif trick == "value":
        body = dumps(draw(values))
    return path, body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=bodies(),
    auth=st.sampled_from(["basic", "body", "bad-basic", "none"]),
    gzipped=st.booleans(),
)
def test_every_body_gets_200_or_a_documented_json_4xx(
    edge: Edge, request: tuple[str, bytes], auth: str, gzipped: bool
) -> None:
    path, body = request
    headers = {"Content-Type": "application/json"}
    if auth == "basic":
        headers["Authorization"] = BASIC
    elif auth == "bad-basic":
        headers["Authorization"] = "Basic " + base64.b64encode(b"\xff\xfe:").decode()
    elif auth == "body" and body.endswith(b"}"):
        body = body[:-1] + b',"writeKey":"' + WRITE_KEY.encode() + b'"}'
    sent = gzip.compress(body) if gzipped else body
    if gzipped:
        headers["Content-Encoding"] = "gzip"

    r = edge.client.post(f"/v1/{path}", content=sent, headers=headers)
    event(f"{r.status_code} {r.json().get('code')}")

    assert r.headers["content-type"] == "application/json"
    if r.status_code == 200:
        assert r.json() == {"success": True}
        assert is_text(body), body
        assert (depth(body) or 0) <= MAX_DEPTH
        edge.validate_all()
    else:
        assert r.status_code in DOCUMENTED, (r.status_code, r.text, body[:200])
        doc = r.json()
        assert set(doc) == {"code", "message"} and doc["message"]
        assert doc["code"] in DOCUMENTED[r.status_code], doc
        if not is_text(body) or (depth(body) or 0) > MAX_DEPTH:
            assert doc["code"] in ("invalid_json", "invalid_write_key"), doc


def test_a_batch_at_the_depth_limit_is_kept_and_one_level_more_is_refused(edge: Edge) -> None:
    def body(levels: int) -> bytes:
        # The body, `batch`, the event and `traits` are four levels; the rest is traits.
        traits: Any = {}
        for _ in range(levels - 4):
            traits = {"k": traits}
        event = {"type": "identify", "userId": "u-deep", "traits": traits}
        return orjson.dumps({"batch": [event]})

    r = edge.client.post("/v1/batch", content=body(MAX_DEPTH), headers={"Authorization": BASIC})
    assert r.status_code == 200, r.text
    assert edge.validate_all() == 1
    r = edge.client.post("/v1/batch", content=body(MAX_DEPTH + 1), headers={"Authorization": BASIC})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_json"
    assert f"{MAX_DEPTH} levels" in r.json()["message"]
