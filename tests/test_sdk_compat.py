"""The official Segment and RudderStack Python SDKs, unmodified and pointed at a real
`clew serve`, land exactly the events they were given in the lake: every messageId once,
re-sent duplicates dropped, and timestamps corrected for clock skew from ``sentAt``."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from _support import WRITE_KEY, ServeProcess, drained, lake_count, wait_for
from clew.lake.query import Lake

pytestmark = pytest.mark.slow

DISTINCT_EVENTS = 3000
USERS = 40
# Share of events given an explicit timestamp in the past, and share sent twice with the same
# messageId (as an SDK retry would); every re-sent event has an explicit timestamp so both
# copies carry the same payload.
PAST_SHARE = 0.4
RESEND_SHARE = 0.1

# The identity must hold exactly over the stored (millisecond) columns.
CORRECTION_SLACK_MS = 0

SDKS: dict[str, Callable[..., Any]] = {"segment": SegmentClient, "rudderstack": RudderClient}


@dataclass(slots=True)
class Expected:
    type: str
    user_id: str | None
    event: str | None = None
    name: str | None = None
    group_id: str | None = None
    previous_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    original_ms: int = 0


@dataclass(slots=True)
class Call:
    method: str
    kwargs: dict[str, Any]
    expected: Expected


def _floor_ms(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _workload(rng: random.Random) -> tuple[list[Call], list[Call]]:
    """DISTINCT_EVENTS calls of every kind across USERS users, each with its own messageId,
    and the calls to send a second time."""
    now = datetime.now(UTC)
    calls = []
    for i in range(DISTINCT_EVENTS):
        user = f"user-{rng.randrange(USERS)}"
        mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        kwargs: dict[str, Any] = {"message_id": mid}
        if rng.random() < PAST_SHARE:
            past = now - timedelta(seconds=rng.randrange(60, 60 * 86_400))
            kwargs["timestamp"] = past.replace(microsecond=rng.randrange(1000) * 1000)
        kind = ("track", "track", "track", "identify", "page", "screen", "group", "alias")[i % 8]
        if kind == "track":
            props = {"n": i, "sku": f"sku-{rng.randrange(50)}", "price": rng.randrange(1, 500)}
            name = rng.choice(("Product Viewed", "Order Completed", "Signed Up"))
            kwargs |= {"user_id": user, "event": name, "properties": props}
            exp = Expected("track", user, event=name, properties=props)
        elif kind == "identify":
            traits = {"email": f"{user}@example.com", "plan": rng.choice(("free", "pro"))}
            kwargs |= {"user_id": user, "traits": traits}
            exp = Expected("identify", user, traits=traits)
        elif kind in ("page", "screen"):
            name = f"{kind}-{rng.randrange(10)}"
            props = {"path": f"/{name}", "n": i}
            kwargs |= {"user_id": user, "name": name, "properties": props}
            exp = Expected(kind, user, name=name, properties=props)
        elif kind == "group":
            group_id = f"org-{rng.randrange(5)}"
            traits = {"employees": rng.randrange(1, 1000)}
            kwargs |= {"user_id": user, "group_id": group_id, "traits": traits}
            exp = Expected("group", user, group_id=group_id, traits=traits)
        else:
            previous = f"anon-{i}"
            kwargs |= {"previous_id": previous, "user_id": user}
            exp = Expected("alias", user, previous_id=previous)
        calls.append(Call(kind, kwargs, exp))
    resend = rng.sample(calls, int(len(calls) * RESEND_SHARE))
    for call in resend:
        call.kwargs.setdefault("timestamp", now - timedelta(minutes=rng.randrange(1, 600)))
    for call in calls:
        if "timestamp" in call.kwargs:
            call.expected.original_ms = _floor_ms(call.kwargs["timestamp"])
    return calls, resend


def _metric(url: str, sample: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"{sample} is not in /metrics:\n{text}")


def _settle(proc: ServeProcess, expected: int) -> None:
    """Wait until nothing is left in flight, then check the lake holds ``expected`` events
    and still does several flush intervals later."""
    wait_for(lambda: drained(proc.url), timeout_s=30)
    assert lake_count(proc.data_dir) == expected
    time.sleep(0.6)
    assert lake_count(proc.data_dir) == expected


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("sdk", sorted(SDKS))
def test_sdk_events_land_once_with_corrected_timestamps(
    serve_process: ServeProcess, sdk: str, gzip: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(f"{sdk}-{gzip}")
    calls, resend = _workload(rng)
    errors: list[tuple[Exception, list[Any]]] = []
    client = SDKS[sdk](
        WRITE_KEY,
        host=serve_process.url,
        gzip=gzip,
        on_error=lambda e, batch: errors.append((e, batch)),
    )
    resend_at_once = {c.kwargs["message_id"] for c in resend[: len(resend) // 2]}

    def send(call: Call) -> dict[str, Any]:
        ok, msg = getattr(client, call.method)(**call.kwargs)
        assert ok, f"the {sdk} SDK refused to queue {call.kwargs}"
        return msg

    resent = 0
    try:
        for call in calls:
            msg = send(call)
            assert msg["messageId"] == call.kwargs["message_id"]
            if "timestamp" not in call.kwargs:
                # The SDK stamped the event itself.
                call.expected.original_ms = _floor_ms(datetime.fromisoformat(msg["timestamp"]))
            if call.kwargs["message_id"] in resend_at_once:
                # A duplicate right behind its original: usually in the same request.
                send(call)
                resent += 1
        client.flush()
        # Duplicates in later requests, after the originals were acknowledged; some twice.
        for call in resend[len(resend) // 2 :] + rng.sample(resend, len(resend) // 2):
            send(call)
            resent += 1
    finally:
        client.shutdown()
    assert errors == [], f"the {sdk} SDK reported errors: {errors[:3]}"
    sdk_logs = [r for r in caplog.records if r.name.startswith(("segment", "rudderstack"))]
    assert sdk_logs == [], [r.getMessage() for r in sdk_logs[:5]]

    expected = {c.kwargs["message_id"]: c.expected for c in calls}
    _settle(serve_process, len(expected))

    duplicates = 'clew_validate_events_total{outcome="duplicates"}'
    wait_for(lambda: _metric(serve_process.url, duplicates) == resent, timeout_s=5)
    lake = Lake(serve_process.data_dir / "lake")
    dupes = lake.sql("SELECT count(*) - count(DISTINCT message_id) FROM events").rows[0][0]
    assert dupes == 0
    rows = lake.sql(
        """SELECT message_id, type, event, name, user_id, group_id, previous_id,
                  epoch_ms(original_timestamp), epoch_ms(sent_at), epoch_ms(received_at),
                  epoch_ms(timestamp), properties, traits
           FROM events"""
    ).rows
    assert {r[0] for r in rows} == set(expected)
    wrong_fields, wrong_original, wrong_corrected = [], [], []
    for mid, typ, event, name, user, group, previous, orig, sent, recv, ts, props, traits in rows:
        exp = expected[mid]
        got = (typ, event, name, user, group, previous)
        want = (exp.type, exp.event, exp.name, exp.user_id, exp.group_id, exp.previous_id)
        if got != want:
            wrong_fields.append((mid, got, want))
        if exp.properties and orjson.loads(props) != exp.properties:
            wrong_fields.append((mid, "properties", props, exp.properties))
        if not exp.traits.items() <= orjson.loads(traits).items():
            wrong_fields.append((mid, "traits", traits, exp.traits))
        if orig != exp.original_ms:
            wrong_original.append((mid, orig, exp.original_ms))
        if sent is None or abs(ts - (recv - (sent - orig))) > CORRECTION_SLACK_MS:
            wrong_corrected.append((mid, ts, recv, sent, orig))
    assert wrong_fields == [], wrong_fields[:5]
    assert wrong_original == [], wrong_original[:5]
    assert wrong_corrected == [], (
        f"{len(wrong_corrected)} of {len(rows)} rows break "
        f"timestamp = received_at - (sent_at - original_timestamp): {wrong_corrected[:5]}"
    )
