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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from clew.events import Event, normalise, parse_time
from clew.identity.identifiers import ANONYMOUS_ID, extract
from clew.identity.rules import IdentityRules
from clew.lake.person_index import MIN_LITERAL, literals
from clew.log.base import Record

if TYPE_CHECKING:
    from clew.privacy.erase import Subject
    from clew.privacy.pii import PiiPolicy


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


def _loads(data: bytes | str | None) -> Any:
    if not data:
        return None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None


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
        request), read as the validate stage reads it."""
        path_type = (rec.header("type") or b"batch").decode()
        source_id = (rec.header("source") or b"").decode()
        request_id = (rec.header("request_id") or f"{rec.partition}-{rec.offset}".encode()).decode()
        received_us = int(rec.header("received_at") or rec.timestamp_ms * 1000)
        received_at = datetime.fromtimestamp(received_us / 1e6, tz=UTC)
        doc = _loads(rec.value)
        ctx = ints = sent = None
        if path_type == "batch":
            if not isinstance(doc, dict) or not isinstance(doc.get("batch"), list):
                text = rec.value.decode("utf-8", errors="replace")
                return (1, 1) if self.whole and self.literal(text) else (0, 1)
            items: list[Any] = doc["batch"]
            ctx = doc["context"] if isinstance(doc.get("context"), dict) else None
            ints = doc["integrations"] if isinstance(doc.get("integrations"), dict) else None
            sent = doc["sentAt"] if isinstance(doc.get("sentAt"), str) else None
        else:
            items = [doc]
        mine = 0
        for i, item in enumerate(items):
            result = normalise(
                item,
                path_type=path_type,
                index=i,
                request_id=request_id,
                source_id=source_id,
                received_at=received_at,
                batch_context=ctx,
                batch_integrations=ints,
                batch_sent_at=sent,
            )
            if isinstance(result, Event):
                mine += self.event(result)
            elif isinstance(item, dict):
                mine += self.whole and self.carries(lenient_event(item))
            else:
                mine += self.whole and self.literal(msgspec.json.encode(item).decode())
        return mine, len(items)

    def dead_letter(self, doc: Mapping[str, Any]) -> bool:
        """A dead letter (a ``dlq`` record, or a row of the ``dlq`` table) of the person."""
        texts = [t for t in (doc.get("normalized"), doc.get("payload")) if isinstance(t, str)]
        carried = False
        time_ms: int | None = None
        for text in texts:
            parsed = _loads(text)
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
        person's: an event or dead letter in range, or (whole-person only) a change."""
        doc = _loads(rec.value)
        if not isinstance(doc, dict):
            return self.whole and self.literal(rec.value.decode("utf-8", errors="replace"))
        if rec.topic == "events":
            return self.event_doc(doc)
        if rec.topic == "dlq" or ("payload" in doc and "reason" in doc):
            return self.dead_letter(doc)
        if rec.topic == "changes" or "kind" in doc or "profile_id" in doc:
            return self.whole and self.change(doc)
        return self.event_doc(doc)

    def payload(self, data: bytes) -> bool:
        """A destination outbox item (an event or a change record) of the person."""
        doc = _loads(data)
        if not isinstance(doc, dict):
            return self.whole and self.literal(data.decode("utf-8", errors="replace"))
        if "kind" in doc or "profile_id" in doc:
            return self.whole and self.change(doc)
        return self.event_doc(doc)
