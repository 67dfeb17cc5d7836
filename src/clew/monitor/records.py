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
    library = context.get("library")
    return _version(
        app.get("version") if isinstance(app, dict) else None,
        (library.get("name"), library.get("version")) if isinstance(library, dict) else None,
    )


def _version(app_version: Any, library: tuple[Any, Any] | None) -> str:
    """:func:`app_version` of a context whose ``app.version`` is ``app_version`` (None when
    there is no such object) and whose ``library`` holds ``(name, version)``, if an object."""
    if isinstance(app_version, str | int | float) and not isinstance(app_version, bool):
        text = str(app_version).strip()
        if text:
            return _clip(text)
    if library is not None:
        name, version = library
        if isinstance(name, str) and name:
            return _clip(f"{name}/{version}" if isinstance(version, str) and version else name)
    return UNKNOWN


def series_key(event_type: str, event: str | None, source_id: str, version: str) -> SeriesKey:
    """The series of an ``events`` record of ``event_type``, ``event`` and ``source_id`` from
    an app of ``version`` (:func:`app_version`)."""
    return SeriesKey(series_event_name(event_type, event), _clip(source_id), version)


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


class _AppView(msgspec.Struct):
    version: Any = None


class _LibraryView(msgspec.Struct):
    name: Any = None
    version: Any = None


class _ContextView(msgspec.Struct):
    app: _AppView | None = None
    library: _LibraryView | None = None


class _SeriesView(msgspec.Struct, rename="camel"):
    """An ``events`` record as :class:`_EventView`, but of its context only what
    :func:`app_version` reads, so the rest of it is skipped, not built as Python objects."""

    type: str = ""
    event: str | None = None
    source_id: str = ""
    timestamp: str = ""
    received_at: str | None = None
    context: _ContextView | None = None


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
        self._series = msgspec.json.Decoder(_SeriesView)
        self._dead = msgspec.json.Decoder(_DeadLetterView)
        self._payload = msgspec.json.Decoder(_PayloadView)
        self._hours: dict[str, int] = {}

    def event(self, value: bytes) -> Observation | None:
        try:
            view = self._events.decode(value)
            bucket = self._hour(view.timestamp)
        except (msgspec.DecodeError, ValueError, OverflowError):
            return None
        key = series_key(view.type, view.event, view.source_id, app_version(view.context))
        return Observation(key, bucket, dead=False, received_at=view.received_at)

    def event_series(
        self, value: bytes
    ) -> tuple[tuple[str, str | None, str, str, int], str | None] | None:
        """What :meth:`event` reads of an ``events`` record, quicker: ``((type, event,
        source_id, app_version, bucket), received_at)``, the first part naming the series
        and hour it counts in (:func:`series_key` of it). None when the record is not of the
        usual shape (a context or its ``app`` or ``library`` that is not an object, a field
        of another type, unreadable JSON or time): then :meth:`event` decides."""
        try:
            view = self._series.decode(value)
            bucket = self._hour(view.timestamp)
        except (msgspec.DecodeError, ValueError, OverflowError):
            return None
        context = view.context
        if context is None:
            version = UNKNOWN
        else:
            app, library = context.app, context.library
            version = _version(
                app.version if app is not None else None,
                (library.name, library.version) if library is not None else None,
            )
        return (view.type, view.event, view.source_id, version, bucket), view.received_at

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
