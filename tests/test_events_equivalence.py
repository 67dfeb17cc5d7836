"""``normalise`` is written for speed (fields tested inline, times in milliseconds); these
properties hold it to the plain version it replaced, kept below as the reference: the same
event or the same rejection for any input, and the same error where that version raised."""

from __future__ import annotations

import contextlib
import functools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from clew.events import (
    EVENT_TYPES,
    Event,
    Rejection,
    _format_ms,
    _ms_of,
    format_time,
    generated_message_id,
    normalise,
    parse_time,
)

# -- the reference: normalise as it was before it was tuned ------------------------------


class _Invalid(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _to_ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


@functools.lru_cache(maxsize=4096)
def _ref_utc_ms(value: str) -> datetime:
    return _to_ms(parse_time(value).astimezone(UTC))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _opt_time(obj: dict[str, Any], key: str) -> tuple[datetime | None, str | None]:
    value = obj.get(key)
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"{key} must be an ISO-8601 string, got {type(value).__name__}"
    try:
        return _ref_utc_ms(value), None
    except ValueError:
        return None, f"{key} is not an ISO-8601 timestamp: {value[:64]!r}"
    except OverflowError:
        return None, f"{key} is outside the years 1 to 9999 in UTC: {value[:64]!r}"


def reference_normalise(
    obj: Any,
    *,
    path_type: str,
    index: int,
    request_id: str,
    source_id: str,
    received_at: datetime,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
    batch_sent_at: str | None = None,
) -> Event | Rejection:
    if not isinstance(obj, dict):
        return Rejection("protocol_violation", f"event must be a JSON object, got {_kind(obj)}")
    raw_mid = obj.get("messageId")
    message_id = (
        str(raw_mid)
        if isinstance(raw_mid, str | int) and raw_mid != ""
        else generated_message_id(request_id, index)
    )
    etype = obj.get("type")
    if path_type != "batch":
        etype = path_type
    event_name = obj.get("event") if isinstance(obj.get("event"), str) else None
    try:
        if not isinstance(etype, str) or etype not in EVENT_TYPES:
            raise _Invalid(
                "protocol_violation",
                f"unknown event type {etype!r}; expected one of {', '.join(sorted(EVENT_TYPES))}",
            )
        ids = _id_fields(obj)
        strings = _string_fields(obj)
        objects = _object_fields(obj, batch_context, batch_integrations)
        _check_identity(etype, ids, strings)
        received_at, original, sent_at = _times(obj, received_at, batch_sent_at)
    except _Invalid as exc:
        return Rejection(
            exc.reason,
            exc.message,
            message_id=message_id,
            event_type=etype if isinstance(etype, str) else None,
            event_name=event_name,
        )
    if etype == "identify" and not objects["traits"]:
        ctx_traits = objects["context"].get("traits")
        if isinstance(ctx_traits, dict):
            objects["traits"] = ctx_traits
    return Event(
        type=etype,
        message_id=message_id,
        timestamp=format_time(_corrected_time(received_at, original, sent_at)),
        received_at=format_time(received_at),
        source_id=source_id,
        original_timestamp=format_time(original) if original is not None else None,
        sent_at=format_time(sent_at) if sent_at is not None else None,
        user_id=ids["userId"],
        anonymous_id=ids["anonymousId"],
        event=strings["event"],
        name=strings["name"],
        category=strings["category"],
        group_id=strings["groupId"],
        previous_id=strings["previousId"],
        properties=objects["properties"],
        traits=objects["traits"],
        context=objects["context"],
        integrations=objects["integrations"],
    )


def _id_fields(obj: dict[str, Any]) -> dict[str, str | None]:
    ids: dict[str, str | None] = {}
    for key in ("userId", "anonymousId"):
        value = obj.get(key)
        if value is None or value == "":
            ids[key] = None
        elif isinstance(value, str):
            ids[key] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            ids[key] = str(value)
        else:
            raise _Invalid("protocol_violation", f"{key} must be a string, got {_kind(value)}")
    return ids


def _string_fields(obj: dict[str, Any]) -> dict[str, str | None]:
    strings: dict[str, str | None] = {}
    for key in ("event", "name", "category", "groupId", "previousId"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            if key in ("groupId", "previousId") and isinstance(value, int | float):
                value = str(value)
            else:
                raise _Invalid("protocol_violation", f"{key} must be a string, got {_kind(value)}")
        strings[key] = value or None
    return strings


def _object_fields(
    obj: dict[str, Any],
    batch_context: dict[str, Any] | None,
    batch_integrations: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for key in ("properties", "traits", "context", "integrations"):
        value = obj.get(key)
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            raise _Invalid("protocol_violation", f"{key} must be an object, got {_kind(value)}")
        objects[key] = value
    if batch_context:
        objects["context"] = {**batch_context, **objects["context"]}
    if batch_integrations:
        objects["integrations"] = {**batch_integrations, **objects["integrations"]}
    return objects


def _check_identity(etype: str, ids: dict[str, str | None], strings: dict[str, str | None]) -> None:
    if etype == "track" and not strings["event"]:
        raise _Invalid("protocol_violation", "a track event needs a non-empty event name")
    if etype == "alias":
        if not strings["previousId"]:
            raise _Invalid("no_identity", "an alias event needs previousId")
        if not ids["userId"]:
            raise _Invalid("no_identity", "an alias event needs userId (the new id)")
    elif etype == "group" and not strings["groupId"]:
        raise _Invalid("no_identity", "a group event needs groupId")
    if etype != "alias" and not ids["userId"] and not ids["anonymousId"]:
        raise _Invalid("no_identity", "the event has neither userId nor anonymousId")


def _times(
    obj: dict[str, Any], received_at: datetime, batch_sent_at: str | None
) -> tuple[datetime, datetime | None, datetime | None]:
    original = _time_field(obj, "timestamp")
    if original is None:
        original = _time_field(obj, "originalTimestamp")
    sent_at = _time_field(obj, "sentAt")
    if sent_at is None and batch_sent_at is not None:
        sent_at = _time_field({"sentAt": batch_sent_at}, "sentAt")
    return _to_ms(received_at), original, sent_at


def _time_field(obj: dict[str, Any], key: str) -> datetime | None:
    value, err = _opt_time(obj, key)
    if err:
        raise _Invalid("protocol_violation", err)
    return value


_EPOCH = datetime(1971, 1, 1, tzinfo=UTC)
_MAX_FUTURE = timedelta(days=1)


def _corrected_time(
    received_at: datetime, original: datetime | None, sent_at: datetime | None
) -> datetime:
    if original is None:
        corrected = received_at
    elif sent_at is None:
        corrected = original
    else:
        try:
            corrected = received_at - (sent_at - original)
        except OverflowError:
            corrected = received_at
    if not (_EPOCH <= corrected <= received_at + _MAX_FUTURE):
        corrected = received_at
    return corrected


# -- inputs ----------------------------------------------------------------------------------

_ZONES = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-30))]

# Moments across the calendar, its ends and the epoch guard included.
_moments = st.one_of(
    st.datetimes(timezones=st.sampled_from(_ZONES)),
    st.datetimes(
        min_value=datetime(1970, 12, 30), max_value=datetime(1971, 1, 2), timezones=st.just(UTC)
    ),
    st.datetimes(min_value=datetime(9999, 12, 29), timezones=st.sampled_from(_ZONES)),
    st.datetimes(max_value=datetime(1, 1, 3), timezones=st.sampled_from(_ZONES)),
    st.datetimes(
        min_value=datetime(2025, 1, 1),
        max_value=datetime(2027, 1, 1),
        timezones=st.sampled_from(_ZONES),
    ),
)


@st.composite
def _time_texts(draw: st.DrawFn) -> str:
    moment = draw(_moments)
    text = moment.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "auto"])))
    if draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    if draw(st.integers(0, 9)) == 0:
        text = text.split("+")[0]  # no offset: taken as UTC
    return text


_times_or_junk = st.one_of(
    st.none(),
    _time_texts(),
    st.sampled_from(["", "yesterday", "2026-13-01T00:00:00Z", "2026-03-04T05:06:07." + "9" * 60]),
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=1),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.sampled_from(["", "u-1", "a-1", "Order Completed"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_objects = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["traits", "email", "x", "app"]), _json, max_size=3),
    _json,
)
_FIELDS: dict[str, Any] = {
    "type": st.one_of(st.sampled_from(sorted(EVENT_TYPES)), _scalars),
    "messageId": st.one_of(_scalars, st.just("m-1")),
    "userId": _scalars,
    "anonymousId": _scalars,
    "event": _scalars,
    "name": _scalars,
    "category": _scalars,
    "groupId": _scalars,
    "previousId": _scalars,
    "properties": _objects,
    "traits": _objects,
    "context": _objects,
    "integrations": _objects,
    "timestamp": _times_or_junk,
    "originalTimestamp": _times_or_junk,
    "sentAt": _times_or_junk,
}


# Valid events of each type, which the drawn fields then vary.
_TEMPLATES: list[dict[str, Any]] = [
    {"type": "track", "event": "Viewed", "userId": "u-1", "anonymousId": "a-1"},
    {"type": "identify", "anonymousId": "a-1", "context": {"traits": {"email": "e@x.test"}}},
    {"type": "alias", "userId": "u-1", "previousId": "p-1"},
    {"type": "group", "groupId": "g-1", "userId": "u-1"},
    {"type": "page", "anonymousId": "a-1", "name": "Home", "category": "Docs"},
    {},
]


@st.composite
def _events(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(_json)
    keys = draw(st.sets(st.sampled_from(sorted(_FIELDS)), max_size=4))
    return draw(st.sampled_from(_TEMPLATES)) | {k: draw(_FIELDS[k]) for k in sorted(keys)}


def _outcome(fn: Any, obj: Any, **kw: Any) -> tuple[str, Any]:
    try:
        result = fn(obj, **kw)
    except Exception as exc:  # the error itself is the outcome compared
        return "raised", (type(exc), str(exc))
    return type(result).__name__, msgspec.json.encode(result)


_received = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
    ),
    st.datetimes(min_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    _moments,
    st.datetimes(),  # naive: the reference raises on it, and so must normalise
)


@settings(max_examples=1500, deadline=None)
@given(
    obj=_events(),
    path_type=st.sampled_from(["batch", "batch", "track", "identify", "alias", "group", "page"]),
    received_at=_received,
    batch_context=st.one_of(st.none(), st.dictionaries(st.sampled_from(["ip", "x"]), _scalars)),
    batch_integrations=st.one_of(st.none(), st.dictionaries(st.sampled_from(["All"]), _scalars)),
    batch_sent_at=st.one_of(st.none(), _time_texts(), st.just("junk")),
    same_received=st.booleans(),
)
def test_normalise_matches_the_reference_on_any_input(
    obj: Any,
    path_type: str,
    received_at: datetime,
    batch_context: dict[str, Any] | None,
    batch_integrations: dict[str, Any] | None,
    batch_sent_at: str | None,
    same_received: bool,
) -> None:
    kw = dict(
        path_type=path_type,
        index=3,
        request_id="req-1",
        source_id="src-1",
        received_at=received_at,
        batch_context=batch_context,
        batch_integrations=batch_integrations,
        batch_sent_at=batch_sent_at,
    )
    expected = _outcome(reference_normalise, obj, **kw)
    assert _outcome(normalise, obj, **kw) == expected
    if same_received:
        # Again with the same receivedAt object: normalise remembers what it worked out.
        assert _outcome(normalise, obj, **kw) == expected


_MS = timedelta(milliseconds=1)
_BOUNDS = [datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC), _EPOCH]


def _text(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


@st.composite
def _skewed(draw: st.DrawFn) -> tuple[datetime, dict[str, Any], str | None]:
    """A receivedAt and an event's times that put the corrected time on or next to the
    limits it is checked against (the epoch guard, a day after receivedAt, the calendar's
    ends), or anywhere."""
    received = draw(_received)
    fields: dict[str, Any] = {}
    sent = draw(st.one_of(st.none(), _moments))
    base = received.replace(tzinfo=UTC) if received.tzinfo is None else received
    try:
        base = _to_ms(base.astimezone(UTC))
    except OverflowError:
        base = _to_ms(base.replace(tzinfo=UTC))
    targets = [*_BOUNDS]
    for moment, days in ((base, 0), (base, 1)):
        with contextlib.suppress(OverflowError):
            targets.append(moment + timedelta(days=days))
    target = draw(st.one_of(st.sampled_from(targets), _moments))
    try:
        target += draw(st.sampled_from([-_MS, timedelta(0), _MS]))
        original = target if sent is None else target - (base - sent)
        fields[draw(st.sampled_from(["timestamp", "originalTimestamp"]))] = _text(original)
    except OverflowError:
        pass
    batch_sent = None
    if sent is not None:
        if draw(st.booleans()):
            fields["sentAt"] = _text(sent)
        else:
            batch_sent = _text(sent)
    return received, fields, batch_sent


# The corrected time on the calendar's last millisecond, a day after receivedAt.
_LAST_DAY = datetime(9999, 12, 30, 23, 59, 59, 999000, tzinfo=UTC)


@settings(max_examples=3000, deadline=None)
@given(skewed=_skewed(), path_type=st.sampled_from(["batch", "track"]))
@example(
    skewed=(
        _LAST_DAY,
        {"timestamp": "9999-12-31T23:59:59.998Z", "sentAt": "9999-12-30T23:59:59.998Z"},
        None,
    ),
    path_type="track",
)
def test_the_clock_skew_correction_matches_the_reference(
    skewed: tuple[datetime, dict[str, Any], str | None], path_type: str
) -> None:
    received_at, fields, batch_sent_at = skewed
    obj = {"type": "track", "event": "Viewed", "userId": "u-1", **fields}
    kw = dict(
        path_type=path_type,
        index=0,
        request_id="req-1",
        source_id="src-1",
        received_at=received_at,
        batch_sent_at=batch_sent_at,
    )
    assert _outcome(normalise, obj, **kw) == _outcome(reference_normalise, obj, **kw)


@settings(max_examples=2000, deadline=None)
@given(moment=st.datetimes(timezones=st.just(UTC)))
def test_times_in_milliseconds_are_written_as_format_time_writes_them(moment: datetime) -> None:
    moment = _to_ms(moment)
    assert _format_ms(_ms_of(moment)) == format_time(moment)
