"""``clew.events.normalise``: the per-event checks and enrichment of docs/tracking-api.md."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from clew.events import Event, Rejection, format_time, normalise, parse_time

RECEIVED = datetime(2026, 3, 4, 5, 6, 7, 890_123, tzinfo=UTC)
RECEIVED_ISO = "2026-03-04T05:06:07.890Z"


def norm(obj: Any, path_type: str = "batch", **kw: Any) -> Event | Rejection:
    args: dict[str, Any] = {
        "index": 0,
        "request_id": "req-1",
        "source_id": "src_1",
        "received_at": RECEIVED,
    }
    args.update(kw)
    return normalise(obj, path_type=path_type, **args)


def accepted(obj: Any, path_type: str = "batch", **kw: Any) -> Event:
    result = norm(obj, path_type, **kw)
    assert isinstance(result, Event), result
    return result


def rejected(obj: Any, reason: str, path_type: str = "batch", **kw: Any) -> Rejection:
    result = norm(obj, path_type, **kw)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.message
    return result


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": "u-1", **fields}


# -- a valid event ---------------------------------------------------------------------------


def test_a_valid_track_event_keeps_its_fields() -> None:
    ev = accepted(
        track(
            messageId="m-1",
            anonymousId="a-1",
            properties={"revenue": 12.5, "items": [1, 2]},
            context={"ip": "10.0.0.1"},
            integrations={"All": True},
        )
    )
    assert ev.type == "track"
    assert ev.message_id == "m-1"
    assert ev.event == "Order Completed"
    assert (ev.user_id, ev.anonymous_id) == ("u-1", "a-1")
    assert ev.properties == {"revenue": 12.5, "items": [1, 2]}
    assert ev.context == {"ip": "10.0.0.1"}
    assert ev.integrations == {"All": True}
    assert ev.source_id == "src_1"
    assert ev.received_at == RECEIVED_ISO


def test_on_a_single_event_path_the_type_comes_from_the_path() -> None:
    ev = accepted({"type": "identify", "event": "Clicked", "userId": "u"}, path_type="track")
    assert ev.type == "track"
    ev = accepted({"userId": "u", "name": "Home"}, path_type="page")
    assert (ev.type, ev.name) == ("page", "Home")


@pytest.mark.parametrize(
    "event",
    [
        {"type": "identify", "userId": "u", "traits": {"plan": "pro"}},
        {"type": "page", "anonymousId": "a", "name": "Home", "category": "Docs"},
        {"type": "screen", "anonymousId": "a", "name": "Settings"},
        {"type": "group", "userId": "u", "groupId": "g-1", "traits": {"seats": 3}},
        {"type": "alias", "userId": "new", "previousId": "old"},
    ],
    ids=lambda e: e["type"],
)
def test_every_event_type_is_accepted(event: dict[str, Any]) -> None:
    ev = accepted(event)
    assert ev.type == event["type"]


# -- messageId, receivedAt -------------------------------------------------------------------


def test_a_missing_message_id_is_a_uuid_stable_for_the_same_request_and_index() -> None:
    first = accepted(track()).message_id
    assert str(uuid.UUID(first)) == first
    # Replaying the same raw record (same request id, same index) gives the same id...
    assert accepted(track()).message_id == first
    # ... while other events get other ids.
    assert accepted(track(), index=1).message_id != first
    assert accepted(track(), request_id="req-2").message_id != first


@pytest.mark.parametrize("missing", [None, ""], ids=["null", "empty"])
def test_a_null_or_empty_message_id_is_replaced(missing: str | None) -> None:
    mid = accepted(track(messageId=missing)).message_id
    assert mid and str(uuid.UUID(mid)) == mid


def test_a_numeric_message_id_becomes_a_string() -> None:
    assert accepted(track(messageId=12345)).message_id == "12345"


def test_received_at_is_the_time_given_in_utc_with_milliseconds() -> None:
    local = RECEIVED.astimezone(timezone(timedelta(hours=2)))
    assert accepted(track(), received_at=local).received_at == RECEIVED_ISO


# -- identities ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(42, "42"), (4.5, "4.5"), ("u-9", "u-9")], ids=["int", "float", "str"]
)
def test_a_numeric_user_id_becomes_a_string(value: Any, expected: str) -> None:
    assert accepted(track(userId=value)).user_id == expected
    assert accepted(track(userId=None, anonymousId=value)).anonymous_id == expected


@pytest.mark.parametrize("value", [True, {"id": 1}, ["u"]], ids=["bool", "object", "array"])
def test_a_user_id_of_another_json_type_is_a_protocol_violation(value: Any) -> None:
    rej = rejected(track(userId=value, messageId="m-7"), "protocol_violation")
    assert "userId" in rej.message
    assert (rej.message_id, rej.event_type, rej.event_name) == ("m-7", "track", "Order Completed")


def test_empty_string_ids_are_treated_as_missing() -> None:
    ev = accepted(track(userId="", anonymousId="a-1"))
    assert (ev.user_id, ev.anonymous_id) == (None, "a-1")
    rejected(track(userId="", anonymousId=""), "no_identity")


@pytest.mark.parametrize("etype", ["track", "identify", "page", "screen"])
def test_an_event_without_user_id_or_anonymous_id_has_no_identity(etype: str) -> None:
    rej = rejected({"type": etype, "event": "E", "messageId": "m-3"}, "no_identity")
    assert rej.message_id == "m-3"
    assert rej.event_type == etype


def test_alias_needs_previous_id_and_user_id() -> None:
    rejected({"type": "alias", "userId": "new"}, "no_identity")
    rejected({"type": "alias", "previousId": "old"}, "no_identity")
    rejected({"type": "alias", "previousId": "old", "anonymousId": "a"}, "no_identity")
    ev = accepted({"type": "alias", "previousId": "old", "userId": "new"})
    assert (ev.previous_id, ev.user_id, ev.anonymous_id) == ("old", "new", None)


def test_group_needs_group_id() -> None:
    rejected({"type": "group", "userId": "u"}, "no_identity")
    rejected({"type": "group", "userId": "u", "groupId": ""}, "no_identity")
    assert accepted({"type": "group", "userId": "u", "groupId": 7}).group_id == "7"


# -- protocol violations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "kind"),
    [([1, 2], "array"), ("track", "string"), (None, "null"), (3, "number")],
    ids=["array", "string", "null", "number"],
)
def test_an_event_that_is_not_an_object_is_a_protocol_violation(obj: Any, kind: str) -> None:
    rej = rejected(obj, "protocol_violation")
    assert kind in rej.message
    assert rej.message_id is None


@pytest.mark.parametrize("etype", ["purchase", "Track", "", None, 1])
def test_an_unknown_type_is_a_protocol_violation(etype: Any) -> None:
    rej = rejected(track(type=etype, messageId="m-1"), "protocol_violation")
    assert rej.message_id == "m-1"


@pytest.mark.parametrize("field", ["properties", "traits", "context", "integrations"])
@pytest.mark.parametrize("value", ["a string", [1], 3, True], ids=["str", "list", "int", "bool"])
def test_an_object_field_of_another_type_is_a_protocol_violation(field: str, value: Any) -> None:
    rej = rejected(track(**{field: value}), "protocol_violation")
    assert field in rej.message


@pytest.mark.parametrize("value", ["last Tuesday", "2024-13-01T00:00:00Z", 1_700_000_000, ""])
@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp", "sentAt"])
def test_a_time_that_is_not_an_iso_8601_string_is_a_protocol_violation(
    field: str, value: Any
) -> None:
    rej = rejected(track(**{field: value}), "protocol_violation")
    assert field in rej.message


def test_a_track_event_needs_an_event_name() -> None:
    rejected({"type": "track", "userId": "u"}, "protocol_violation")
    rejected(track(event=""), "protocol_violation")
    rejected(track(event=5), "protocol_violation")


# -- null is absent --------------------------------------------------------------------------


def test_json_null_in_optional_fields_is_the_same_as_absent() -> None:
    ev = accepted(
        track(
            userId=None,
            anonymousId="a-1",
            properties=None,
            traits=None,
            context=None,
            integrations=None,
            timestamp=None,
            originalTimestamp=None,
            sentAt=None,
            messageId=None,
            name=None,
            category=None,
        )
    )
    assert (ev.user_id, ev.anonymous_id) == (None, "a-1")
    assert ev.properties == ev.traits == ev.context == ev.integrations == {}
    assert ev.timestamp == RECEIVED_ISO
    assert ev.original_timestamp is None and ev.sent_at is None


# -- batch-level context and integrations ----------------------------------------------------


def test_batch_context_and_integrations_are_merged_under_the_events_own() -> None:
    batch_context = {"library": {"name": "analytics-python"}, "ip": "1.1.1.1"}
    batch_integrations = {"All": False, "Mixpanel": True}
    ev = accepted(
        track(context={"ip": "2.2.2.2", "locale": "fr"}, integrations={"Mixpanel": False}),
        batch_context=batch_context,
        batch_integrations=batch_integrations,
    )
    assert ev.context == {"library": {"name": "analytics-python"}, "ip": "2.2.2.2", "locale": "fr"}
    assert ev.integrations == {"All": False, "Mixpanel": False}
    # The batch's dicts are shared by every event of the batch: they must not change.
    assert batch_context == {"library": {"name": "analytics-python"}, "ip": "1.1.1.1"}
    assert batch_integrations == {"All": False, "Mixpanel": True}
    bare = accepted(track(), batch_context=batch_context, batch_integrations=batch_integrations)
    assert (bare.context, bare.integrations) == (batch_context, batch_integrations)


# -- identify traits -------------------------------------------------------------------------


def test_identify_traits_come_from_context_traits_when_top_level_traits_are_missing() -> None:
    ctx = {"traits": {"email": "a@example.com"}, "ip": "1.1.1.1"}
    ev = accepted({"type": "identify", "userId": "u", "context": ctx})
    assert ev.traits == {"email": "a@example.com"}
    ev = accepted({"type": "identify", "userId": "u", "traits": None, "context": ctx})
    assert ev.traits == {"email": "a@example.com"}
    ev = accepted({"type": "identify", "userId": "u", "traits": {"plan": "pro"}, "context": ctx})
    assert ev.traits == {"plan": "pro"}
    # Only identify takes them: a track event's traits stay its own.
    assert accepted(track(context=ctx)).traits == {}


# -- timestamps ------------------------------------------------------------------------------


def test_clock_skew_is_corrected_with_the_events_own_sent_at_over_the_batchs() -> None:
    ev = accepted(
        track(timestamp="2020-01-01T00:00:00.000Z", sentAt="2020-01-01T00:00:05.000Z"),
        batch_sent_at="2020-01-01T00:00:10.000Z",
    )
    assert parse_time(ev.timestamp) == parse_time(RECEIVED_ISO) - timedelta(seconds=5)
    assert ev.original_timestamp == "2020-01-01T00:00:00.000Z"
    assert ev.sent_at == "2020-01-01T00:00:05.000Z"


def test_clock_skew_is_corrected_with_the_batchs_sent_at_when_the_event_has_none() -> None:
    ev = accepted(
        track(timestamp="2020-01-01T00:00:00.250Z"), batch_sent_at="2020-01-01T00:00:10.000Z"
    )
    assert parse_time(ev.timestamp) == parse_time(RECEIVED_ISO) - timedelta(seconds=9.75)
    assert ev.original_timestamp == "2020-01-01T00:00:00.250Z"
    assert ev.sent_at == "2020-01-01T00:00:10.000Z"


def test_original_timestamp_is_read_when_timestamp_is_absent() -> None:
    ev = accepted(
        track(originalTimestamp="2020-01-01T01:00:00+01:00", sentAt="2020-01-01T00:00:03Z")
    )
    assert parse_time(ev.timestamp) == parse_time(RECEIVED_ISO) - timedelta(seconds=3)
    assert ev.original_timestamp == "2020-01-01T00:00:00.000Z"


def test_without_sent_at_the_sent_timestamp_is_used_as_is() -> None:
    ev = accepted(track(timestamp="2025-06-01T12:00:00.123+02:00"))
    assert ev.timestamp == ev.original_timestamp == "2025-06-01T10:00:00.123Z"
    assert ev.sent_at is None
    # An offset-less time is UTC.
    assert accepted(track(timestamp="2025-06-01T12:00:00")).timestamp == "2025-06-01T12:00:00.000Z"


def test_without_any_time_the_timestamp_is_received_at() -> None:
    ev = accepted(track(), batch_sent_at="2020-01-01T00:00:10.000Z")
    assert ev.timestamp == RECEIVED_ISO
    assert ev.original_timestamp is None


@pytest.mark.parametrize(
    ("timestamp", "sent_at"),
    [
        ("1970-01-01T00:00:00Z", None),
        ("2199-01-01T00:00:00Z", None),
        ("1970-01-01T00:00:00Z", "2026-03-04T05:06:00Z"),
        ("2026-03-04T05:06:00Z", "1970-01-01T00:00:00Z"),
    ],
    ids=["past", "future", "skew-to-past", "skew-to-future"],
)
def test_an_absurd_device_clock_falls_back_to_received_at(
    timestamp: str, sent_at: str | None
) -> None:
    ev = accepted(track(timestamp=timestamp, sentAt=sent_at))
    assert ev.timestamp == RECEIVED_ISO
    assert ev.original_timestamp == format_time(parse_time(timestamp))


@pytest.mark.parametrize(
    ("timestamp", "sent_at"),
    [
        ("9999-12-31T23:59:59Z", "2020-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
        ("2020-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ],
    ids=["far-future", "far-past", "sent-at-far-past"],
)
def test_a_correction_beyond_the_calendar_falls_back_to_received_at(
    timestamp: str, sent_at: str
) -> None:
    # These used to raise OverflowError, which stalled the validate stage on that record.
    ev = accepted(track(timestamp=timestamp, sentAt=sent_at))
    assert ev.timestamp == RECEIVED_ISO


def test_times_before_the_year_1000_are_written_with_four_digit_years() -> None:
    # A three-digit year ("999-01-01…") is not ISO-8601 and made the lake stage fail.
    ev = accepted(track(timestamp="0999-01-01T00:00:00Z"))
    assert ev.original_timestamp == "0999-01-01T00:00:00.000Z"
    assert ev.timestamp == RECEIVED_ISO


def test_a_time_that_leaves_the_calendar_in_utc_is_a_protocol_violation() -> None:
    rej = rejected(track(timestamp="0001-01-01T00:00:00+01:00"), "protocol_violation")
    assert "timestamp" in rej.message


def test_format_time_writes_utc_with_milliseconds_and_z() -> None:
    dt = datetime(2026, 1, 2, 3, 4, 5, 678_999, tzinfo=timezone(timedelta(hours=-5)))
    assert format_time(dt) == "2026-01-02T08:04:05.678Z"
    assert parse_time(format_time(RECEIVED)) == RECEIVED.replace(microsecond=890_000)


def test_a_time_with_thousands_of_digits_is_read_but_not_remembered() -> None:
    # Times are remembered between events (a batch shares its sentAt); a write key ships in
    # every web page, so a client must not be able to fill that memory with huge strings.
    from clew.events import _cached_time_of

    _cached_time_of.cache_clear()
    for n in range(50):
        stamp = "2026-03-04T05:06:07." + str(n) * 5_000 + "Z"
        event = accepted({"type": "track", "event": "x", "userId": "u", "timestamp": stamp})
        assert event.timestamp.startswith("2026-03-04T05:06:07.")
    accepted({"type": "track", "event": "x", "userId": "u", "timestamp": "2026-03-04T05:06:07Z"})
    assert _cached_time_of.cache_info().currsize == 1
