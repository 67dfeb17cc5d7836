"""The event envelope (Segment spec) and its normalisation.

The collector stores each request as received; the validate stage turns every event of a
request into a normalised :class:`Event` (or a :class:`Rejection` for the dead-letter queue)
with :func:`normalise`. Normalisation is deterministic: replaying the same raw record gives the
same events with the same generated ``messageId``s.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})

# Short analytics.js paths and full paths map to the type they imply ("batch" has none).
PATH_TYPES = {
    "track": "track",
    "t": "track",
    "identify": "identify",
    "i": "identify",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "group": "group",
    "g": "group",
    "alias": "alias",
    "a": "alias",
    "batch": "batch",
    "b": "batch",
    "import": "batch",
}

_ID_NAMESPACE = uuid.UUID("6f1b2a3c-8d4e-4f5a-9b6c-7d8e9f0a1b2c")
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_STRING_FIELDS = ("event", "name", "category", "groupId", "previousId")
_ID_FIELDS = ("userId", "anonymousId")


class Event(msgspec.Struct, omit_defaults=True, rename="camel"):
    """A normalised event, as written to the ``events`` topic (JSON, Segment field names)."""

    type: str
    message_id: str
    timestamp: str
    received_at: str
    source_id: str
    original_timestamp: str | None = None
    sent_at: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    group_id: str | None = None
    previous_id: str | None = None
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}
    integrations: dict[str, Any] = {}

    @property
    def identity_key(self) -> bytes:
        """The log key: a person's events stay in one partition, in order."""
        return (self.user_id or self.anonymous_id or self.previous_id or self.message_id).encode()


class Rejection(msgspec.Struct, omit_defaults=True):
    """Why one event cannot be accepted (the dead-letter reason)."""

    reason: str
    message: str
    message_id: str | None = None
    event_type: str | None = None
    event_name: str | None = None


@functools.lru_cache(maxsize=4096)
def format_time(dt: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``, as Segment writes it.

    Cached: the events of one request share their ``receivedAt`` and usually their
    ``sentAt``, so most calls repeat a recent value."""
    # isoformat pads years before 1000 to four digits; strftime("%Y") does not on Linux.
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def parse_time(value: str) -> datetime:
    """Parse an ISO-8601 timestamp; a value without an offset is taken as UTC."""
    dt = datetime.fromisoformat(value)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def generated_message_id(request_id: str, index: int) -> str:
    """The ``messageId`` given to the ``index``-th event of a request that sent none."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{request_id}/{index}"))


# The longest time string remembered: an ISO-8601 time with microseconds and an offset is 32
# characters, and a client may send a fraction of thousands of digits that still parses.
_CACHED_TIME_CHARS = 40


def _utc_ms(value: str) -> datetime:
    """:func:`parse_time` of ``value`` in UTC, in whole milliseconds. Remembered for short
    strings: the events of a batch share its ``sentAt``, and a client often sends the same
    times again; a long one is not kept, so that clients cannot fill the cache with them."""
    if len(value) > _CACHED_TIME_CHARS:
        return _parse_utc_ms(value)
    return _cached_utc_ms(value)


def _parse_utc_ms(value: str) -> datetime:
    return _to_ms(parse_time(value).astimezone(UTC))


_cached_utc_ms = functools.lru_cache(maxsize=4096)(_parse_utc_ms)


def _opt_time(obj: dict[str, Any], key: str) -> tuple[datetime | None, str | None]:
    value = obj.get(key)
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"{key} must be an ISO-8601 string, got {type(value).__name__}"
    try:
        return _utc_ms(value), None
    except ValueError:
        return None, f"{key} is not an ISO-8601 timestamp: {value[:64]!r}"
    except OverflowError:
        return None, f"{key} is outside the years 1 to 9999 in UTC: {value[:64]!r}"


class _Invalid(Exception):
    """One envelope check failed: the dead-letter reason and its message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def normalise(
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
    """Check one event's envelope and normalise it (see docs/tracking-api.md)."""
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
        # analytics.js < 2 sent identify traits in context.traits.
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
    """``userId`` and ``anonymousId``: a string, or a number taken as its text; empty is unset."""
    ids: dict[str, str | None] = {}
    for key in _ID_FIELDS:
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
    """``event``, ``name``, ``category``, ``groupId``, ``previousId``: strings (the two ids
    may be numbers); empty is unset."""
    strings: dict[str, str | None] = {}
    for key in _STRING_FIELDS:
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
    """``properties``, ``traits``, ``context``, ``integrations``: objects, empty when unset;
    a batch's ``context`` and ``integrations`` fill in what the event leaves out."""
    objects: dict[str, dict[str, Any]] = {}
    for key in _OBJECT_FIELDS:
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
    """The fields each type needs: a track its name, an alias both ids, a group its id, and
    every other type a userId or an anonymousId."""
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
    """``receivedAt``, the original timestamp (``timestamp``, else ``originalTimestamp``) and
    ``sentAt`` (else the batch's), in whole milliseconds: the precision every time is stored
    with, so the stored values satisfy timestamp = receivedAt - (sentAt - originalTimestamp)
    exactly."""
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


def _corrected_time(
    received_at: datetime, original: datetime | None, sent_at: datetime | None
) -> datetime:
    """The event's time with the device's clock skew removed."""
    if original is None:
        corrected = received_at
    elif sent_at is None:
        corrected = original
    else:
        try:
            corrected = received_at - (sent_at - original)
        except OverflowError:
            corrected = received_at
    # A corrupt device clock can push the correction outside any sane range.
    if not (_EPOCH <= corrected <= received_at + _MAX_FUTURE):
        corrected = received_at
    return corrected


# An unset device clock reads 1970-01-01.
_EPOCH = datetime(1971, 1, 1, tzinfo=UTC)
_MAX_FUTURE = timedelta(days=1)


def _to_ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


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
