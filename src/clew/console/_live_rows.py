"""The live debugger's rows: records of the ``events`` and ``dlq`` topics turned into what
the page shows (who, what, and what validation said), the filter the page asked for, and the
stream's position in both topics (the SSE event id a browser sends back to resume).

Records come from :meth:`Log.read`, which returns them decrypted when the log seals them per
person, so a row is the record as the lake stage sees it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from clew._redact import MASK
from clew.dlq.records import DeadLetter
from clew.events import format_time, parse_time
from clew.log.base import Record
from clew.topics import DLQ_TOPIC, EVENTS_TOPIC

if TYPE_CHECKING:
    from clew.schema import CompiledPlan

PlanFor = Callable[[str], "CompiledPlan | None"]
"""A source id's tracking plan in force, or None (``PlanCache.plan_for``)."""

TOPICS = (EVENTS_TOPIC, DLQ_TOPIC)
KINDS = ("all", "events", "dead")
_MAX_FIELD = 200
_MAX_JSON = 20_000

# A dead letter's payload is the request as sent, write key included: never shown.
_WRITE_KEY = re.compile(r'("writeKey"\s*:\s*)"(?:[^"\\]|\\.)*"')
_dead_decoder = msgspec.json.Decoder(DeadLetter)
_object_decoder = msgspec.json.Decoder(dict[str, Any])

Position = dict[str, dict[int, int]]
"""Per topic, per partition, the offset of the next record to read."""


@dataclass(frozen=True, slots=True)
class Filter:
    """What the page asked to see; an empty field matches everything. ``identifier``
    matches a user, anonymous or previous id exactly, or an email trait."""

    kind: str = "all"
    source: str = ""
    type: str = ""
    name: str = ""
    identifier: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filter:
        def text(key: str) -> str:
            return query.get(key, "").strip()[:_MAX_FIELD]

        kind = text("kind")
        return cls(
            kind=kind if kind in KINDS else "all",
            source=text("source"),
            type=text("type"),
            name=text("name"),
            identifier=text("identifier"),
        )

    def wants(self, topic: str) -> bool:
        if self.kind == "events":
            return topic == EVENTS_TOPIC
        if self.kind == "dead":
            return topic == DLQ_TOPIC
        return True

    def matches(self, row: dict[str, Any]) -> bool:
        if self.source and self.source != row["source_id"]:
            return False
        if self.type and self.type != row["type"]:
            return False
        if self.name and self.name.casefold() not in (row["name"] or "").casefold():
            return False
        return not self.identifier or self.identifier in row["ids"]


def row(rec: Record, sources: Mapping[str, str], plan_for: PlanFor) -> dict[str, Any]:
    """What the page shows of one record of ``events`` or ``dlq``. The validate stage keeps
    no verdict for an accepted event, so its row says what the source's plan in force says
    of it now (the schema versions it matches)."""
    out = _dead_row(rec) if rec.topic == DLQ_TOPIC else _event_row(rec, plan_for)
    out["id"] = f"{rec.topic}/{rec.partition}/{rec.offset}"
    out["source"] = sources.get(out["source_id"], out["source_id"])
    out["who"] = " ".join(f"{k}:{v}" for k, v in out.pop("who_pairs"))
    return out


def _event_row(rec: Record, plan_for: PlanFor) -> dict[str, Any]:
    try:
        doc = _object_decoder.decode(rec.value)
    except msgspec.DecodeError:
        doc = {}
    traits: dict[str, Any] = doc["traits"] if isinstance(doc.get("traits"), dict) else {}
    context: dict[str, Any] = doc["context"] if isinstance(doc.get("context"), dict) else {}
    pairs = [
        (k, doc[f])
        for k, f in (
            ("user_id", "userId"),
            ("anonymous_id", "anonymousId"),
            ("previous_id", "previousId"),
        )
        if isinstance(doc.get(f), str)
    ]
    if isinstance(traits.get("email"), str):
        pairs.append(("email", traits["email"]))
    violations = context.get("violations")
    result: dict[str, Any] = {"accepted": True}
    if violations:
        result["plan_violations"] = violations
        result["note"] = "accepted with violations the source's plan lets through"
    else:
        result["note"] = "accepted; no plan violation recorded"
    plan = plan_for(str(doc.get("sourceId", "")))
    if plan is None:
        result["plan"] = "none: this source has no tracking plan, its events are not checked"
    else:
        verdict = plan.enforce(
            {
                "type": doc.get("type"),
                "event": doc.get("event"),
                "properties": doc.get("properties") or {},
                "traits": traits,
                "context": context,
            }
        )
        result["plan"] = {
            "revision": plan.revision,
            "enforcement": str(plan.enforcement),
            "schema_versions": verdict.schema_versions,
        }
    return {
        "kind": "event",
        "at": str(doc.get("receivedAt", "")),
        "source_id": str(doc.get("sourceId", "")),
        "type": str(doc.get("type", "")),
        "name": str(doc.get("event") or doc.get("name") or ""),
        "message_id": str(doc.get("messageId", "")),
        "summary": result["note"],
        "who_pairs": pairs,
        "ids": {v for _, v in pairs},
        "result": _pretty(result),
        "json": _pretty(doc),
    }


def _dead_row(rec: Record) -> dict[str, Any]:
    try:
        dead = _dead_decoder.decode(rec.value)
    except msgspec.DecodeError:
        dead = DeadLetter("unreadable", "this dead letter cannot be read", "", "", "", -1, -1, -1)
    try:
        payload: Any = json.loads(dead.payload) if dead.payload_encoding is None else None
    except ValueError:
        payload = None
    body = payload if isinstance(payload, dict) else {}
    if "writeKey" in body:
        body["writeKey"] = MASK
    pairs = [
        (k, body[f])
        for k, f in (("user_id", "userId"), ("anonymous_id", "anonymousId"))
        if isinstance(body.get(f), str)
    ]
    result = {
        k: v
        for k, v in (
            ("reason", dead.reason),
            ("message", dead.message),
            ("violations", dead.violations),
            ("schema_versions", dead.schema_versions),
            ("stage", dead.stage),
        )
        if v
    }
    return {
        "kind": "dead",
        "at": _iso(dead.received_at),
        "source_id": dead.source_id,
        "type": dead.event_type or "",
        "name": dead.event_name or "",
        "message_id": dead.message_id or "",
        "summary": f"{dead.reason}: {dead.message}",
        "who_pairs": pairs,
        "ids": {v for _, v in pairs},
        "result": _pretty(result),
        "json": (
            _pretty(payload)
            if payload is not None
            else _WRITE_KEY.sub(rf'\1"{MASK}"', dead.payload[:_MAX_JSON])
        ),
    }


def _iso(text: str) -> str:
    """A time as events carry it (``…Z``, milliseconds), or as given when unreadable."""
    try:
        return format_time(parse_time(text))
    except (ValueError, OverflowError):
        return text


def _pretty(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    return text if len(text) <= _MAX_JSON else text[:_MAX_JSON] + "\n… (cut)"


def format_position(position: Position) -> str:
    """The stream's position as an SSE id.

    >>> format_position({"events": {0: 3, 1: 0}, "dlq": {0: 1}})
    'events:0=3,1=0;dlq:0=1'
    """
    return ";".join(
        f"{topic}:" + ",".join(f"{p}={o}" for p, o in sorted(parts.items()))
        for topic, parts in position.items()
    )


def parse_position(text: str, start: Position, end: Position) -> Position:
    """The position a browser sent back (``Last-Event-ID``), each offset kept within what
    the log holds; ``end`` for anything missing or unreadable.

    >>> parse_position("events:0=2;dlq:0=x", {"events": {0: 0}, "dlq": {0: 0}},
    ...                {"events": {0: 5}, "dlq": {0: 4}})
    {'events': {0: 2}, 'dlq': {0: 4}}
    """
    out = {topic: dict(parts) for topic, parts in end.items()}
    for chunk in text[:2000].split(";"):
        topic, _, parts = chunk.partition(":")
        if topic not in out:
            continue
        for item in parts.split(","):
            p, _, o = item.partition("=")
            if not (p.isdigit() and o.isdigit()) or int(p) not in out[topic]:
                continue
            low, high = start[topic].get(int(p), 0), end[topic][int(p)]
            out[topic][int(p)] = min(max(int(o), low), high)
    return out
