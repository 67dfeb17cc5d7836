"""Routing rules (selection, integrations, consent), retry timing, and the outbox's batching,
without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, cast

import pytest

from clew.destinations import (
    DestinationConfig,
    DestinationDirectory,
    Outbox,
    Route,
    consent_allows,
    destinations_dir,
    read_change,
    read_event,
)
from clew.destinations.webhook import backoff_s, build_body, retry_after, sign
from clew.log.base import Consumer, Record
from clew.stages.destinations import DestinationsStage


def _dest(**options: Any) -> Route:
    return Route(DestinationConfig(name="d", url="http://127.0.0.1:1/", **options))


def _event(**fields: Any) -> bytes:
    return json.dumps({"type": "track", "event": "Order Completed", **fields}).encode()


ADS = frozenset({"Advertising"})


@pytest.mark.parametrize(
    ("consent", "allowed"),
    [
        (None, True),  # no consent object: no enforcement (Segment's behaviour)
        ({}, True),
        ({"ip": "x"}, True),
        ({"categoryPreferences": {"Advertising": True}}, True),
        ({"categoryPreferences": {"Advertising": False}}, False),
        ({"categoryPreferences": {}}, False),  # present but empty: nothing granted
        ({"categoryPreferences": {"Analytics": True}}, False),  # missing counts as not granted
        ({"categoryPreferences": {"Advertising": "true"}}, False),  # only JSON true grants
        ({"categoryPreferences": ["Advertising"]}, False),  # unreadable: fail closed
    ],
)
def test_consent_policy(consent: Any, allowed: bool) -> None:
    assert consent_allows(ADS, consent) is allowed
    assert consent_allows(frozenset(), consent) is True  # unmapped destinations get everything


def test_every_category_of_a_destination_must_be_granted() -> None:
    both = frozenset({"Advertising", "Analytics"})
    assert consent_allows(both, {"categoryPreferences": {"Advertising": True, "Analytics": True}})
    assert not consent_allows(both, {"categoryPreferences": {"Advertising": True}})


def test_events_are_selected_by_track_name_or_type() -> None:
    route = _dest(events=["Order Completed", "identify"])
    assert route.reject_reason(read_event(_event())) is None
    assert route.reject_reason(read_event(_event(event="Cart Viewed"))) == "event"
    assert route.reject_reason(read_event(b'{"type": "identify"}')) is None
    assert (
        route.reject_reason(read_event(b'{"type": "page", "name": "Order Completed"}')) == "event"
    )
    assert _dest(events=["track"]).reject_reason(read_event(_event(event="Any"))) is None
    assert _dest(events=[]).reject_reason(read_event(_event())) == "event"
    # Events are never change records, and changes are off unless asked for.
    assert _dest().reject_reason(read_change(b'{"kind": "profile"}') or _never()) == "change"


def _never() -> Any:
    raise AssertionError("expected a change record")


def test_the_integrations_object_turns_a_destination_off_per_event() -> None:
    route = _dest()
    assert route.reject_reason(read_event(_event(integrations={"d": False}))) == "integrations"
    assert route.reject_reason(read_event(_event(integrations={"All": False}))) == "integrations"
    on = {"All": False, "d": {"option": 1}}
    assert route.reject_reason(read_event(_event(integrations=on))) is None
    assert route.reject_reason(read_event(_event(integrations={"other": False}))) is None


def test_changes_are_selected_by_kind_audience_and_trait() -> None:
    route = _dest(
        events=[],
        changes=["audience_entered", "trait_changed", "profile"],
        audiences=["vip"],
        traits=["plan"],
        categories=["Advertising"],
    )

    def reason(record: dict[str, Any]) -> str | None:
        item = read_change(json.dumps(record).encode())
        assert item is not None
        return route.reject_reason(item)

    assert reason({"kind": "audience_entered", "audience": "vip"}) is None
    assert reason({"kind": "audience_entered", "audience": {"name": "VIP", "key": "vip"}}) is None
    assert reason({"kind": "audience_entered", "audience": "churn"}) == "change"
    assert reason({"kind": "audience_exited", "audience": "vip"}) == "change"
    assert reason({"kind": "trait_changed", "trait": "plan"}) is None
    assert reason({"kind": "trait_changed", "trait": {"name": "city"}}) == "change"
    assert reason({"kind": "profile", "profile_id": "p"}) is None  # audiences filter only audiences
    assert reason({"kind": "volume_alert"}) == "change"
    revoked = {"categoryPreferences": {"Advertising": False}}
    assert reason({"kind": "profile", "consent": revoked}) == "consent"
    assert reason({"kind": "profile", "context": {"consent": revoked}}) == "consent"
    assert read_change(b'{"no": "kind"}') is None


def test_backoff_has_full_jitter_under_an_exponential_ceiling() -> None:
    assert backoff_s(1, 1.0, 600, rand=lambda: 1.0) == 1.0
    assert backoff_s(4, 1.0, 600, rand=lambda: 1.0) == 8.0
    assert backoff_s(40, 1.0, 600, rand=lambda: 1.0) == 600
    assert backoff_s(4, 1.0, 600, rand=lambda: 0.25) == 2.0
    assert backoff_s(10_000, 1.0, 600, rand=lambda: 0.5) == 300


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert retry_after("120") == 120
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after("soon") is None
    assert retry_after(None) is None


def test_the_body_is_the_batch_and_the_signature_covers_its_exact_bytes() -> None:
    body = build_body([b'{"a":1}', b'{"b":2}'], datetime(2026, 5, 1, tzinfo=UTC))
    assert json.loads(body) == {"batch": [{"a": 1}, {"b": 2}], "sentAt": "2026-05-01T00:00:00.000Z"}
    assert sign(b"k", body) != sign(b"k", body + b" ")
    assert sign(b"k", body).startswith("sha256=")


def test_the_outbox_forms_batches_by_size_or_age(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "destinations.db")
    try:
        offsets = {("events", 0): 5}
        outbox.enqueue({"d": [b"1", b"2", b"3"]}, offsets, {}, {"d": 100}, now_ms=1000)
        assert outbox.form_batch("d", 5, 500, now_ms=1200) == 1500  # not full, not old enough
        batch = outbox.form_batch("d", 5, 500, now_ms=1500)
        assert not isinstance(batch, int) and batch is not None and batch.events == 3
        assert outbox.head("d") == batch
        assert outbox.payloads(batch) == [b"1", b"2", b"3"]
        assert outbox.stored_offsets() == {("events", 0): 5}
        spilled = outbox.enqueue({"d": [b"4", b"5"]}, offsets, {}, {"d": 4}, now_ms=1600)
        assert spilled == {"d": 1}
        (letter,) = outbox.dead_letters("d")
        assert letter.events == 1 and "outbox full" in letter.reason
        assert outbox.waiting() == {"d": 4}
    finally:
        outbox.close()


class _Consumer:
    def __init__(self) -> None:
        self.committed: dict[tuple[str, int], int] = {}

    def commit(self, offsets: dict[tuple[str, int], int], produce: object = None) -> None:
        self.committed.update(offsets)


def test_a_new_destination_does_not_get_the_logs_history(tmp_path: Path) -> None:
    """Records appended before the stage first saw a destination are not for it, even when
    the stage reads them only now (a new consumer group over an existing log, or a backlog)."""
    directory = DestinationDirectory(destinations_dir(tmp_path))
    # Nothing listens on port 9; the sender's retries wait a minute, past this test.
    directory.save(DestinationConfig(name="d", url="http://127.0.0.1:9/", retry_initial_s=60))
    now_ms = 1_800_000_000_000
    stage = DestinationsStage(tmp_path, clock=lambda: now_ms / 1000)
    consumer = _Consumer()
    try:
        records = [
            Record("events", 0, i, b"u", _event(messageId=f"m{i}"), (), ts)
            for i, ts in enumerate([now_ms - 3_600_000, now_ms - 1, now_ms, now_ms + 5])
        ]
        stage.handle(records, cast(Consumer, consumer))
        assert consumer.committed == {("events", 0): 4}
        outbox = Outbox(tmp_path / "destinations.db")
        try:
            assert outbox.waiting() == {"d": 2}
        finally:
            outbox.close()
    finally:
        stage.shutdown()
