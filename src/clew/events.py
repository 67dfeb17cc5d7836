"""The event envelope (Segment spec) and its normalisation.

The collector stores each request as received; the validate stage turns every event of a
request into a normalised :class:`Event` (or a :class:`Rejection` for the dead-letter queue)
with :func:`normalise`. Normalisation is deterministic: replaying the same raw record gives the
same events with the same generated ``messageId``s.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, date, datetime, timedelta
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


def _time_of(value: str) -> tuple[datetime, int, str]:
    """:func:`parse_time` of ``value`` in UTC, in whole milliseconds, as a datetime and as
    milliseconds since the Unix epoch, and its text as :func:`format_time` writes it.
    Remembered for short strings: the events of a batch share its ``sentAt``, and a client
    often sends the same times again; a long one is not kept, so that clients cannot fill the
    cache with them."""
    if len(value) > _CACHED_TIME_CHARS:
        return _parse_time_of(value)
    return _cached_time_of(value)


def _parse_time_of(value: str) -> tuple[datetime, int, str]:
    dt = _to_ms(parse_time(value).astimezone(UTC))
    ms = _ms_of(dt)
    return dt, ms, _format_ms(ms)


_cached_time_of = functools.lru_cache(maxsize=4096)(_parse_time_of)

# Times as milliseconds since the Unix epoch: the clock-skew correction of every event is then
# integer arithmetic, and its text is put together from pieces made once (below), a quarter
# of the cost of datetime.isoformat.
_DAY_MS = 86_400_000
_UNIX_ORDINAL = date(1970, 1, 1).toordinal()


def _ms_of(dt: datetime) -> int:
    """A time in whole milliseconds (its fields read as UTC) as milliseconds since the Unix
    epoch."""
    days = dt.toordinal() - _UNIX_ORDINAL
    seconds = dt.hour * 3600 + dt.minute * 60 + dt.second
    return (days * 86_400 + seconds) * 1000 + dt.microsecond // 1000


_CLOCK = tuple(f"T{m // 60:02d}:{m % 60:02d}:" for m in range(1440))
_SECONDS = tuple(f"{s:02d}." for s in range(60))
_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))
# "YYYY-MM-DD" per day since the epoch; emptied when it grows past _MAX_DAYS, since the days
# come from clients' clocks.
_day_texts: dict[int, str] = {}
_MAX_DAYS = 4096


def _format_ms(ms: int) -> str:
    """:func:`format_time` of the time ``ms`` milliseconds after the Unix epoch (within the
    years 1 to 9999)."""
    day, ms = divmod(ms, _DAY_MS)
    text = _day_texts.get(day)
    if text is None:
        if len(_day_texts) >= _MAX_DAYS:
            _day_texts.clear()
        # date.isoformat writes four-digit years, as format_time does.
        text = _day_texts[day] = date.fromordinal(day + _UNIX_ORDINAL).isoformat()
    minute, ms = divmod(ms, 60_000)
    second, ms = divmod(ms, 1000)
    return f"{text}{_CLOCK[minute]}{_SECONDS[second]}{_MILLIS[ms]}"


class _Invalid(Exception):
    """One envelope check failed: the dead-letter reason and its message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _time_value(key: str, value: object) -> tuple[datetime, int, str]:
    """The time of the field ``key`` (not null) and its text, or why it is invalid."""
    if not isinstance(value, str):
        raise _Invalid(
            "protocol_violation", f"{key} must be an ISO-8601 string, got {type(value).__name__}"
        )
    try:
        return _time_of(value)
    except ValueError:
        raise _Invalid(
            "protocol_violation", f"{key} is not an ISO-8601 timestamp: {value[:64]!r}"
        ) from None
    except OverflowError:
        raise _Invalid(
            "protocol_violation", f"{key} is outside the years 1 to 9999 in UTC: {value[:64]!r}"
        ) from None


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
    # Every event of every request passes here, so the usual case (fields of the expected
    # types) is tested inline, field by field, and anything else goes to the helper that
    # says what is wrong; the checks run in the order of the helpers below, so the first
    # problem found, hence the dead-letter message, is the same.
    if not isinstance(obj, dict):
        return Rejection("protocol_violation", f"event must be a JSON object, got {_kind(obj)}")
    get = obj.get
    raw_mid = get("messageId")
    if raw_mid.__class__ is str and raw_mid:
        message_id = raw_mid
    else:
        message_id = (
            str(raw_mid)
            if isinstance(raw_mid, str | int) and raw_mid != ""
            else generated_message_id(request_id, index)
        )
    etype = get("type") if path_type == "batch" else path_type
    event_name = get("event")
    if not isinstance(event_name, str):
        event_name = None
    try:
        if not isinstance(etype, str) or etype not in EVENT_TYPES:
            raise _Invalid(
                "protocol_violation",
                f"unknown event type {etype!r}; expected one of {', '.join(sorted(EVENT_TYPES))}",
            )
        user_id = get("userId")
        if user_id.__class__ is not str or not user_id:
            user_id = _id_value("userId", user_id)
        anonymous_id = get("anonymousId")
        if anonymous_id.__class__ is not str or not anonymous_id:
            anonymous_id = _id_value("anonymousId", anonymous_id)
        event = get("event")
        if event is not None and event.__class__ is not str:
            event = _string_value("event", event)
        name = get("name")
        if name is not None and name.__class__ is not str:
            name = _string_value("name", name)
        category = get("category")
        if category is not None and category.__class__ is not str:
            category = _string_value("category", category)
        group_id = get("groupId")
        if group_id is not None and group_id.__class__ is not str:
            group_id = _string_value("groupId", group_id)
        previous_id = get("previousId")
        if previous_id is not None and previous_id.__class__ is not str:
            previous_id = _string_value("previousId", previous_id)
        properties = get("properties")
        if properties.__class__ is not dict:
            properties = {} if properties is None else _object_value("properties", properties)
        traits = get("traits")
        if traits.__class__ is not dict:
            traits = {} if traits is None else _object_value("traits", traits)
        context = get("context")
        if context.__class__ is not dict:
            context = {} if context is None else _object_value("context", context)
        integrations = get("integrations")
        if integrations.__class__ is not dict:
            integrations = (
                {} if integrations is None else _object_value("integrations", integrations)
            )
        if batch_context:
            context = {**batch_context, **context}
        if batch_integrations:
            integrations = {**batch_integrations, **integrations}
        _check_identity(
            etype, user_id, anonymous_id, event or None, group_id or None, previous_id or None
        )
        original = get("timestamp")
        if original is not None:
            original = _time_value("timestamp", original)
        else:
            original = get("originalTimestamp")
            if original is not None:
                original = _time_value("originalTimestamp", original)
        sent_at = get("sentAt")
        if sent_at is not None:
            sent_at = _time_value("sentAt", sent_at)
        elif batch_sent_at is not None:
            sent_at = _time_value("sentAt", batch_sent_at)
    except _Invalid as exc:
        return Rejection(
            exc.reason,
            exc.message,
            message_id=message_id,
            event_type=etype if isinstance(etype, str) else None,
            event_name=event_name,
        )
    if etype == "identify" and not traits:
        # analytics.js < 2 sent identify traits in context.traits.
        ctx_traits = context.get("traits")
        if isinstance(ctx_traits, dict):
            traits = ctx_traits
    timestamp, received = _timestamps(received_at, original, sent_at)
    return Event(
        etype,
        message_id,
        timestamp,
        received,
        source_id,
        original[2] if original is not None else None,
        sent_at[2] if sent_at is not None else None,
        user_id,
        anonymous_id,
        event or None,
        name or None,
        category or None,
        group_id or None,
        previous_id or None,
        properties,
        traits,
        context,
        integrations,
    )


def _id_value(key: str, value: object) -> str | None:
    """``userId`` or ``anonymousId``: a string, or a number taken as its text; empty is
    unset."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Invalid("protocol_violation", f"{key} must be a string, got {_kind(value)}")


def _string_value(key: str, value: object) -> str:
    """One of ``event``, ``name``, ``category``, ``groupId``, ``previousId`` that is not null:
    a string (the two ids may be numbers)."""
    if isinstance(value, str):
        return value
    if key in ("groupId", "previousId") and isinstance(value, int | float):
        return str(value)
    raise _Invalid("protocol_violation", f"{key} must be a string, got {_kind(value)}")


def _object_value(key: str, value: object) -> dict[str, Any]:
    """One of ``properties``, ``traits``, ``context``, ``integrations``: an object, empty when
    unset."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid("protocol_violation", f"{key} must be an object, got {_kind(value)}")
    return value


def _check_identity(
    etype: str,
    user_id: str | None,
    anonymous_id: str | None,
    event: str | None,
    group_id: str | None,
    previous_id: str | None,
) -> None:
    """The fields each type needs: a track its name, an alias both ids, a group its id, and
    every other type a userId or an anonymousId."""
    if etype == "track" and not event:
        raise _Invalid("protocol_violation", "a track event needs a non-empty event name")
    if etype == "alias":
        if not previous_id:
            raise _Invalid("no_identity", "an alias event needs previousId")
        if not user_id:
            raise _Invalid("no_identity", "an alias event needs userId (the new id)")
    elif etype == "group" and not group_id:
        raise _Invalid("no_identity", "a group event needs groupId")
    if etype != "alias" and not user_id and not anonymous_id:
        raise _Invalid("no_identity", "the event has neither userId nor anonymousId")


def _timestamps(
    received_at: datetime,
    original: tuple[datetime, int, str] | None,
    sent_at: tuple[datetime, int, str] | None,
) -> tuple[str, str]:
    """The event's ``timestamp`` and ``receivedAt`` texts. ``receivedAt`` is taken in whole
    milliseconds, the precision every time is stored with, so the stored values satisfy
    timestamp = receivedAt - (sentAt - originalTimestamp) exactly; the timestamp is the
    original one (``timestamp``, else ``originalTimestamp``) with the device's clock skew
    removed."""
    if received_at.tzinfo is not UTC:
        return _timestamps_any(received_at, original, sent_at)
    # The stages give receivedAt in UTC: its text and bounds are then worked out once per
    # request, and the correction is done in milliseconds (:func:`_timestamps_any` with
    # datetimes is the reference: the same outcome, errors included).
    received, received_ms, received_text, latest = _received(received_at)
    if original is None:
        corrected, text = received_ms, received_text
    elif sent_at is None:
        corrected, text = original[1], original[2]
    else:
        corrected, text = received_ms - (sent_at[1] - original[1]), None
        if not _MIN_MS <= corrected <= _MAX_MS:
            # Beyond the calendar (where datetime arithmetic overflows).
            corrected, text = received_ms, received_text
    # A corrupt device clock can push the correction outside any sane range.
    if corrected < _EPOCH_MS:
        return received_text, received_text
    if latest is None:
        # Within a day of the calendar's end the bound itself is beyond it: this raises
        # OverflowError, as the comparison of datetimes always did.
        latest = _ms_of(received + _MAX_FUTURE)
    if corrected > latest:
        return received_text, received_text
    return (text if text is not None else _format_ms(corrected)), received_text


def _timestamps_any(
    received_at: datetime,
    original: tuple[datetime, int, str] | None,
    sent_at: tuple[datetime, int, str] | None,
) -> tuple[str, str]:
    """:func:`_timestamps` for a ``received_at`` in another time zone, or none."""
    received = _to_ms(received_at)
    if original is None:
        corrected = received
    elif sent_at is None:
        corrected = original[0]
    else:
        try:
            corrected = received - (sent_at[0] - original[0])
        except OverflowError:
            corrected = received
    # A corrupt device clock can push the correction outside any sane range.
    if not (_EPOCH <= corrected <= received + _MAX_FUTURE):
        corrected = received
    return format_time(corrected), format_time(received)


# The last receivedAt seen (the events of a request share theirs): the object given, it in
# whole milliseconds as a datetime and since the epoch, its text, and the milliseconds a day
# after it (None past the calendar's end).
_last_received: tuple[datetime, datetime, int, str, int | None] | None = None


def _received(received_at: datetime) -> tuple[datetime, int, str, int | None]:
    global _last_received
    last = _last_received
    if last is not None and last[0] is received_at:
        return last[1], last[2], last[3], last[4]
    received = _to_ms(received_at)
    received_ms = _ms_of(received)
    latest = received_ms + _DAY_MS
    _last_received = (
        received_at,
        received,
        received_ms,
        _format_ms(received_ms),
        latest if latest <= _MAX_MS else None,
    )
    return _last_received[1:]


# An unset device clock reads 1970-01-01.
_EPOCH = datetime(1971, 1, 1, tzinfo=UTC)
_MAX_FUTURE = timedelta(days=1)
_EPOCH_MS = _ms_of(_EPOCH)
# The first and the last millisecond of the calendar (datetime.min and datetime.max).
_MIN_MS = _ms_of(datetime.min)
_MAX_MS = _ms_of(datetime.max)


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
