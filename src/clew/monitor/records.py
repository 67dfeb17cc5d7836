"""Which series and hour a record of the ``events`` or ``dlq`` topic counts in (no I/O, no
clock); the monitor stage (:mod:`clew.stages.monitor`) reads its records with
:class:`RecordReader`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from clew.monitor.volume import UNKNOWN, SeriesKey, hour_of

_MAX_KEY_CHARS = 200


def _clip(value: str) -> str:
    return value[:_MAX_KEY_CHARS]


def series_event_name(event_type: str | None, event: str | None) -> str:
    """The ``event`` of a track call, else the type (``page``, ``identify``, …)."""
    if event_type == "track" and event:
        return _clip(event)
    return _clip(event_type) if event_type else UNKNOWN


def app_version(context: Any) -> str:
    """``context.app.version``, else ``"{library.name}/{library.version}"``, else unknown.

    >>> app_version({"app": {"version": "2.1.0"}, "library": {"name": "ios", "version": "4"}})
    '2.1.0'
    >>> app_version({"library": {"name": "analytics.js", "version": "5.2.1"}})
    'analytics.js/5.2.1'
    >>> app_version(None)
    'unknown'
    """
    if not isinstance(context, dict):
        return UNKNOWN
    app = context.get("app")
    if isinstance(app, dict):
        version = app.get("version")
        if isinstance(version, str | int | float) and not isinstance(version, bool):
            text = str(version).strip()
            if text:
                return _clip(text)
    library = context.get("library")
    if isinstance(library, dict):
        name, version = library.get("name"), library.get("version")
        if isinstance(name, str) and name:
            return _clip(f"{name}/{version}" if isinstance(version, str) and version else name)
    return UNKNOWN


@dataclass(frozen=True, slots=True)
class Observation:
    """One record, as the monitor counts it."""

    key: SeriesKey
    bucket: int
    dead: bool
    dlq_reason: str | None = None
    dlq_message: str | None = None
    received_at: str | None = None


class _EventView(msgspec.Struct, rename="camel"):
    type: str = ""
    event: str | None = None
    source_id: str = ""
    timestamp: str = ""
    received_at: str | None = None
    context: Any = None


class _DeadLetterView(msgspec.Struct):
    reason: str = UNKNOWN
    message: str = ""
    payload: str = ""
    source_id: str = ""
    received_at: str = ""
    event_type: str | None = None
    event_name: str | None = None


class _PayloadView(msgspec.Struct):
    context: Any = None
    type: Any = None
    event: Any = None


class RecordReader:
    """Reads records of the ``events`` and ``dlq`` topics into observations; ``None`` for a
    record it cannot read (the stage counts and skips it). Decodes only the fields it needs."""

    def __init__(self) -> None:
        self._events = msgspec.json.Decoder(_EventView)
        self._dead = msgspec.json.Decoder(_DeadLetterView)
        self._payload = msgspec.json.Decoder(_PayloadView)
        self._hours: dict[str, int] = {}

    def event(self, value: bytes) -> Observation | None:
        try:
            view = self._events.decode(value)
            bucket = self._hour(view.timestamp)
        except (msgspec.DecodeError, ValueError, OverflowError):
            return None
        key = SeriesKey(
            series_event_name(view.type, view.event),
            _clip(view.source_id),
            app_version(view.context),
        )
        return Observation(key, bucket, dead=False, received_at=view.received_at)

    def dead_letter(self, value: bytes) -> Observation | None:
        try:
            view = self._dead.decode(value)
            bucket = hour_of(datetime.fromisoformat(view.received_at))
        except (msgspec.DecodeError, ValueError, OverflowError):
            return None
        event_type, event, context = view.event_type, view.event_name, None
        try:
            payload = self._payload.decode(view.payload)
        except (msgspec.DecodeError, ValueError):
            payload = None
        if payload is not None:
            context = payload.context
            event_type = event_type or (payload.type if isinstance(payload.type, str) else None)
            event = event or (payload.event if isinstance(payload.event, str) else None)
        key = SeriesKey(
            series_event_name(event_type, event), _clip(view.source_id), app_version(context)
        )
        return Observation(
            key,
            bucket,
            dead=True,
            dlq_reason=view.reason,
            dlq_message=view.message[:500],
            received_at=view.received_at,
        )

    def _hour(self, timestamp: str) -> int:
        # The validate stage writes UTC times as "YYYY-MM-DDTHH:MM:SS.mmmZ", so the first 13
        # characters name the hour; parsing each one would cost more than the rest of a record.
        if len(timestamp) > 13 and timestamp.endswith("Z") and timestamp[13] == ":":
            prefix = timestamp[:13]
            bucket = self._hours.get(prefix)
            if bucket is None:
                if len(self._hours) > 10_000:
                    self._hours.clear()
                bucket = hour_of(datetime.fromisoformat(prefix + ":00:00+00:00"))
                self._hours[prefix] = bucket
            return bucket
        return hour_of(datetime.fromisoformat(timestamp))
