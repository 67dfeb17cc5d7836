"""The Spark rebuild's row builders (plain functions over Arrow batches, run here without
Spark): an identify stored before the Tracking API bounded nesting, with traits 300 deep,
becomes a profile row cut at the limit, as the DuckDB rebuild writes it."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pyarrow as pa

from clew.batch._spark_rows import EVENT_COLUMNS, Job, prepare, resolve
from clew.config import Settings
from clew.lake._profile_rows import traits_json
from clew.lake.tables import EVENTS, to_arrow
from clew.nesting import TOO_DEEP


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def test_an_identify_with_traits_300_deep_resolves_to_a_profile_row() -> None:
    traits = {"email": "ada@lovelace.org", "phone": nested(300), "k": nested(300)}
    event = {
        "type": "identify",
        "messageId": "m-1",
        "timestamp": "2026-03-01T00:00:00.000Z",
        "receivedAt": "2026-03-01T00:00:00.000Z",
        "sourceId": "src",
        "userId": "u-1",
        "traits": traits,
    }
    # As the lake stage stored it: orjson cannot write this deep, msgspec can.
    events = to_arrow(EVENTS, [msgspec.json.encode(event)]).select(list(EVENT_COLUMNS))
    job = Job(Settings().identity.model_dump_json(), (), 2_000)

    rows = [row for b in resolve(prepare(events.to_batches(), job), job) for row in b.to_pylist()]

    (profile,) = [r for r in rows if r["traits"] is not None]
    assert profile["user_id"] == "u-1" and profile["email"] == "ada@lovelace.org"
    assert profile["traits"] == traits_json(traits)
    assert orjson.loads(profile["traits"])["email"] == "ada@lovelace.org"
    assert TOO_DEEP in profile["traits"]


def test_the_latest_consent_by_event_time_reaches_the_profile_row() -> None:
    """Consent preferences pass through `prepare` to the unifier; the newer state wins even
    when it comes first, and a person without consent has `{}`."""

    def event(mid: str, at: str, user: str, context: dict[str, Any]) -> dict[str, Any]:
        ts = f"2026-03-01T00:00:{at}.000Z"
        return {
            "type": "track",
            "event": "Viewed",
            "messageId": mid,
            "timestamp": ts,
            "receivedAt": ts,
            "sourceId": "src",
            "userId": user,
            "context": context,
        }

    def prefs(marketing: bool) -> dict[str, Any]:
        return {"consent": {"categoryPreferences": {"marketing": marketing, "ads": "n/a"}}}

    docs = [
        event("m-2", "20", "u-1", prefs(False)),
        event("m-1", "10", "u-1", prefs(True)),
        event("m-3", "30", "u-1", {"consent": {"categoryPreferences": "yes"}}),
        event("m-4", "40", "u-2", {}),
    ]
    events = to_arrow(EVENTS, [orjson.dumps(d) for d in docs]).select(list(EVENT_COLUMNS))
    job = Job(Settings().identity.model_dump_json(), (), 2_000)

    prepared = pa.Table.from_batches(list(prepare(events.to_batches(), job)))
    got = [None if c is None else orjson.loads(c) for c in prepared.column("consent").to_pylist()]
    assert got == [
        {"marketing": False, "ads": "n/a"},
        {"marketing": True, "ads": "n/a"},
        None,
        None,
    ]
    ordered = prepared.sort_by("timestamp")
    rows = [row for b in resolve(ordered.to_batches(), job) for row in b.to_pylist()]

    consent = {r["user_id"]: orjson.loads(r["consent"]) for r in rows if r["user_id"]}
    assert consent == {"u-1": {"categoryPreferences": {"marketing": False}}, "u-2": {}}
