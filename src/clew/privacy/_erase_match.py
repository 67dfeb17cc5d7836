"""Deciding whether a record, row or payload carries a person (used by ``clew.privacy.erase``
and ``clew.privacy.verify``).

An event is the person's when identity resolution would see one of their identifiers in it:
:func:`~clew.identity.identifiers.extract` under the configured rules (plus the matched
identifier of an imported record, and an alias's ``previousId`` as either id type), applied to
the event as written and, when a PII policy is configured, as the validate stage rewrites it.
Records about profiles (snapshots, audience changes, deletions) are the person's when they name
one of the person's profile ids or identifiers. Text that cannot be read as events (a dead
letter's unparseable payload) is the person's when one of its JSON string literals is one of
the person's identifiers (only values at least ``MIN_LITERAL`` long, so that a user id "42"
does not claim every dead letter that mentions 42).

A malformed record (invalid UTF-8, a lone surrogate escape, text that is not JSON, a field of
the wrong type) is never skipped and never makes a method raise: it is matched as bytes, and is
the person's (whole-person only) when one of their values appears in it, in UTF-8 or as JSON
escapes it (emails in any letter case; values shorter than ``MIN_RAW`` are not searched), the
test `clew privacy verify` applies to raw bytes. In a ``raw`` batch, only the events that
cannot be read are matched as bytes, as the validate stage dead-letters only those. A callback
given to :class:`Matcher` hears of every log record that could not be read as records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from clew.events import Event, normalise, parse_time
from clew.identity.identifiers import ANONYMOUS_ID, extract
from clew.identity.rules import IdentityRules
from clew.lake.person_index import MIN_LITERAL, literals
from clew.log.base import Record
from clew.privacy._verify_bytes import find, needles
from clew.raw_records import UNREADABLE, read_headers, split_request

if TYPE_CHECKING:
    from clew.privacy.pii import PiiPolicy
    from clew.privacy.subject import Subject


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def lenient_event(doc: Mapping[str, Any]) -> Event:
    """An :class:`Event` of a JSON object with Segment field names, whatever its validity
    (only the fields identity resolution reads need to be right)."""
    return Event(
        type=str(doc.get("type") or ""),
        message_id=str(doc.get("messageId") or ""),
        timestamp=doc["timestamp"] if isinstance(doc.get("timestamp"), str) else "",
        received_at="",
        source_id="",
        user_id=doc.get("userId"),
        anonymous_id=doc.get("anonymousId"),
        previous_id=doc.get("previousId"),
        traits=_obj(doc.get("traits")),
        context=_obj(doc.get("context")),
        properties=_obj(doc.get("properties")),
    )


def _ms(value: str) -> int | None:
    try:
        return int(parse_time(value).timestamp() * 1000)
    except (ValueError, OverflowError):
        return None


# What reading a malformed document may raise (msgspec raises UnicodeDecodeError for invalid
# UTF-8 in a string; a field of the wrong type fails wherever it is used): the record is then
# matched as bytes.
MALFORMED: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    OverflowError,
    RecursionError,
)


class _WrongShapeError(ValueError):
    """A readable record without the fields its topic's records have (matched as bytes)."""


def _loads(data: bytes | str | None) -> Any:
    """The JSON document, or None when there is none or it cannot be read."""
    if not data:
        return None
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def _text_bytes(text: str) -> bytes:
    # A str from a lenient JSON reader may hold a lone surrogate.
    return text.encode("utf-8", errors="surrogatepass")


def record_bytes(rec: Record) -> bytes:
    """A record's key, value and header values, as the byte test reads them."""
    return b"\x00".join((rec.key or b"", rec.value, *(v for _, v in rec.headers)))


class Matcher:
    """Whether things carry ``subject`` (and, with ``since_ms``/``until_ms``, whether an
    event's time is in ``[since_ms, until_ms)``)."""

    def __init__(
        self,
        subject: Subject,
        rules: IdentityRules,
        since_ms: int | None = None,
        until_ms: int | None = None,
        pii: PiiPolicy | None = None,
        on_unreadable: Callable[[Record], None] | None = None,
    ) -> None:
        self.identifiers = frozenset(subject.identifiers)
        self.profile_ids = frozenset(subject.profile_ids)
        self.since_ms, self.until_ms = since_ms, until_ms
        self.whole = since_ms is None and until_ms is None
        self._rules = rules
        self._table = rules.table()
        self._pii = pii if pii else None
        self._values = {v for _, v in self.identifiers}
        self._literals = {v.lower() for v in self._values if len(v) >= MIN_LITERAL}
        self._needles = needles(subject.identifiers, subject.profile_ids)
        self._on_unreadable = on_unreadable

    def in_bytes(self, data: bytes) -> bool:
        """One of the person's values is in ``data`` (module docstring); never raises."""
        return bool(self._needles) and find(data, self._needles) is not None

    def in_text(self, text: str) -> bool:
        """:meth:`in_bytes` of a text's UTF-8."""
        return self.in_bytes(_text_bytes(text))

    def _unreadable(self, rec: Record) -> None:
        if rec.value and self._on_unreadable is not None:
            self._on_unreadable(rec)

    def in_range(self, time_ms: int | None) -> bool:
        if self.whole:
            return True
        if time_ms is None:
            return False
        return (self.since_ms is None or time_ms >= self.since_ms) and (
            self.until_ms is None or time_ms < self.until_ms
        )

    # -- events ------------------------------------------------------------------------------

    def _ids(self, event: Event) -> Iterable[tuple[str, str]]:
        found = extract(event, self._rules, table=self._table)
        for i in found.identifiers:
            yield i.id_type, i.value
        if found.link is not None:
            yield found.link.id_type, found.link.value
        if event.type == "alias" and isinstance(event.previous_id, str):
            yield ANONYMOUS_ID, event.previous_id.strip()
            if self._rules.previous_id_type:
                yield self._rules.previous_id_type, event.previous_id.strip()

    def carries(self, event: Event) -> bool:
        """Whether the event carries one of the person's identifiers (time aside)."""
        if not self.identifiers.isdisjoint(self._ids(event)):
            return True
        if self._pii is not None:
            rewritten = self._pii.apply(event)
            return rewritten is not event and not self.identifiers.isdisjoint(self._ids(rewritten))
        return False

    def event(self, event: Event) -> bool:
        """The person's event, in the time range."""
        if not self.carries(event):
            return False
        return self.whole or self.in_range(_ms(event.timestamp))

    def event_doc(self, doc: Mapping[str, Any]) -> bool:
        return self.event(lenient_event(doc))

    def literal(self, text: str) -> bool:
        """One of ``text``'s JSON string literals is one of the person's identifiers."""
        if not self._literals:
            return False
        lowered = text.lower()
        if not any(v in lowered for v in self._literals):
            return False
        return not self._literals.isdisjoint(literals(text))

    # -- log records -------------------------------------------------------------------------

    def raw(self, rec: Record) -> tuple[int, int]:
        """``(the person's events in range, all events)`` of a ``raw`` record (one HTTP
        request), read as the validate stage reads it; what cannot be read is matched as
        bytes (module docstring). Never raises."""
        try:
            return self._raw(rec)
        except MALFORMED:
            self._unreadable(rec)
            return (1, 1) if self.whole and self.in_bytes(record_bytes(rec)) else (0, 1)

    def _raw(self, rec: Record) -> tuple[int, int]:
        head = read_headers(rec)
        try:
            request = split_request(head.path_type, rec.value)
        except UNREADABLE:
            self._unreadable(rec)
            return (1, 1) if self.whole and self.in_bytes(record_bytes(rec)) else (0, 1)
        raws = [bytes(r) for r in request.events]
        mine = 0
        unreadable = False
        for i, raw in enumerate(raws):
            try:
                item = msgspec.json.decode(raw)
                result = normalise(
                    item,
                    path_type=head.path_type,
                    index=i,
                    request_id=head.request_id,
                    source_id=head.source_id,
                    received_at=head.received_at,
                    batch_context=request.context,
                    batch_integrations=request.integrations,
                    batch_sent_at=request.sent_at,
                )
                if isinstance(result, Event):
                    mine += self.event(result)
                elif isinstance(item, dict):
                    mine += self.whole and self.carries(lenient_event(item))
                else:
                    mine += self.whole and self.in_bytes(raw)
            except MALFORMED:
                unreadable = True
                mine += self.whole and self.in_bytes(raw)
        if unreadable:
            self._unreadable(rec)
        return mine, len(raws)

    def dead_letter(self, doc: Mapping[str, Any]) -> bool:
        """A dead letter (a ``dlq`` record, or a row of the ``dlq`` table) of the person; a
        payload that cannot be read is matched as bytes. Never raises."""
        try:
            return self._dead_letter(doc)
        except MALFORMED:
            texts = [t for t in (doc.get("normalized"), doc.get("payload")) if isinstance(t, str)]
            return self.whole and any(self.in_text(t) for t in texts)

    def _dead_letter(self, doc: Mapping[str, Any]) -> bool:
        texts = [t for t in (doc.get("normalized"), doc.get("payload")) if isinstance(t, str)]
        carried = False
        time_ms: int | None = None
        for text in texts:
            parsed = _loads(text)
            if parsed is None:
                carried = carried or self.in_text(text)
                continue
            items = (
                parsed.get("batch") if isinstance(parsed, dict) and "batch" in parsed else parsed
            )
            for item in items if isinstance(items, list) else [items]:
                if isinstance(item, dict):
                    event = lenient_event(item)
                    if time_ms is None and event.timestamp:
                        time_ms = _ms(event.timestamp)
                    carried = carried or self.carries(event)
            carried = carried or self.literal(text)
        if not carried or self.whole:
            return carried
        if time_ms is None:
            received = doc.get("received_at")
            if isinstance(received, datetime):
                time_ms = int(received.timestamp() * 1000)
            elif isinstance(received, str):
                time_ms = _ms(received)
        return self.in_range(time_ms)

    def change(self, doc: Mapping[str, Any]) -> bool:
        """A record of the ``changes`` topic (profile snapshot or deletion, audience or trait
        change) about the person."""
        pids = self.profile_ids
        if doc.get("profile_id") in pids or doc.get("into") in pids:
            return True
        merged = doc.get("merged_ids")
        if isinstance(merged, list) and not pids.isdisjoint(
            m for m in merged if isinstance(m, str)
        ):
            return True
        rows = doc.get("identities")
        if isinstance(rows, list):
            for row in rows:
                if (
                    isinstance(row, dict)
                    and (row.get("type"), row.get("value")) in self.identifiers
                ):
                    return True
        found = doc.get("identifiers")
        if isinstance(found, dict):
            for id_type, values in found.items():
                if isinstance(values, list) and any(
                    (id_type, v) in self.identifiers for v in values
                ):
                    return True
        if ("user_id", doc.get("user_id")) in self.identifiers:
            return True
        return self.literal(msgspec.json.encode(doc).decode())

    def record(self, rec: Record) -> bool:
        """Whether a record of ``events``, ``dlq`` or ``changes`` (or any JSON record) is the
        person's: an event or dead letter in range, or (whole-person only) a change, or a
        record that cannot be read with one of the person's values in its bytes. Never
        raises."""
        try:
            doc = _loads(rec.value)
            if isinstance(doc, dict):
                return self._document(rec, doc)
        except MALFORMED:
            pass
        self._unreadable(rec)
        return self.whole and self.in_bytes(record_bytes(rec))

    def _document(self, rec: Record, doc: dict[str, Any]) -> bool:
        if rec.topic == "events":
            return self.event_doc(doc)
        if rec.topic == "dlq" or ("payload" in doc and "reason" in doc):
            if not any(isinstance(doc.get(k), str) for k in ("payload", "normalized")):
                raise _WrongShapeError("a dead letter without its text")
            return self.dead_letter(doc)
        if rec.topic == "changes" or "kind" in doc or "profile_id" in doc:
            return self.whole and self.change(doc)
        return self.event_doc(doc)

    def payload(self, data: bytes) -> bool:
        """A destination outbox item (an event or a change record) of the person; one that
        cannot be read is matched as bytes. Never raises."""
        try:
            doc = _loads(data)
            if isinstance(doc, dict):
                if "kind" in doc or "profile_id" in doc:
                    return self.whole and self.change(doc)
                return self.event_doc(doc)
        except MALFORMED:
            pass
        return self.whole and self.in_bytes(data)
