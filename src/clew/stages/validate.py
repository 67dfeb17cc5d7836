"""The validate stage (group ``validate``): splits each raw request into events, checks and
normalises every event, drops exact duplicates by ``messageId``, and routes each event to the
``events`` topic or, with its reason, to the ``dlq`` topic. The outputs and the consumed
offsets are committed in one atomic step, so a crash never duplicates or loses an event.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from clew.collector.app import RAW_TOPIC
from clew.events import Event, Rejection, normalise
from clew.log.base import Consumer, Message, Record
from clew.stages._dedup import DedupIndex
from clew.stages.base import Stage

EVENTS_TOPIC = "events"
DLQ_TOPIC = "dlq"


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """A row of the dead-letter queue, as written to the ``dlq`` topic."""

    reason: str
    message: str
    payload: str
    source_id: str
    received_at: str
    raw_partition: int
    raw_offset: int
    index: int
    message_id: str | None = None
    event_type: str | None = None
    event_name: str | None = None


class _RawBatch(msgspec.Struct):
    batch: list[msgspec.Raw] = []


_raw_batch_decoder = msgspec.json.Decoder(_RawBatch)
_encoder = msgspec.json.Encoder()


class ValidateStage(Stage):
    group = "validate"
    topics = (RAW_TOPIC,)

    def __init__(self, dedup: DedupIndex, dedup_window_hours: float = 24.0) -> None:
        self._dedup = dedup
        self._window_ms = int(dedup_window_hours * 3600_000)
        self._last_prune = 0.0
        self.counters: Counter[str] = Counter()

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        events: list[tuple[Event, str]] = []
        dead: list[DeadLetter] = []
        for rec in records:
            self._split(rec, events, dead)
        now_ms = time.time_ns() // 1_000_000
        dupes = self._dedup.claim(
            [(f"{ev.source_id}/{ev.message_id}", origin) for ev, origin in events], now_ms
        )
        out_events = [
            Message(value=_encoder.encode(ev), key=ev.identity_key)
            for i, (ev, _) in enumerate(events)
            if i not in dupes
        ]
        out_dead = [Message(value=_encoder.encode(d), key=d.source_id.encode()) for d in dead]
        consumer.commit(produce={EVENTS_TOPIC: out_events, DLQ_TOPIC: out_dead})
        self.counters["events"] += len(out_events)
        self.counters["duplicates"] += len(dupes)
        for d in dead:
            self.counters[f"dlq_{d.reason}"] += 1

    def tick(self, consumer: Consumer) -> None:
        if time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            self._dedup.prune(time.time_ns() // 1_000_000 - self._window_ms)

    def _split(self, rec: Record, events: list[tuple[Event, str]], dead: list[DeadLetter]) -> None:
        source_id = (rec.header("source") or b"").decode()
        path_type = (rec.header("type") or b"batch").decode()
        request_id = (rec.header("request_id") or f"{rec.partition}-{rec.offset}".encode()).decode()
        received_us = int(rec.header("received_at") or rec.timestamp_ms * 1000)
        received_at = datetime.fromtimestamp(received_us / 1e6, tz=UTC)
        received_iso = received_at.isoformat()

        def to_dlq(index: int, rej: Rejection, payload: str) -> None:
            dead.append(
                DeadLetter(
                    reason=rej.reason,
                    message=rej.message,
                    payload=payload,
                    source_id=source_id,
                    received_at=received_iso,
                    raw_partition=rec.partition,
                    raw_offset=rec.offset,
                    index=index,
                    message_id=rej.message_id,
                    event_type=rej.event_type,
                    event_name=rej.event_name,
                )
            )

        try:
            body = orjson.loads(rec.value)
        except orjson.JSONDecodeError as e:
            to_dlq(
                -1,
                Rejection("invalid_json", f"the request is not valid JSON: {e}"),
                _text(rec.value),
            )
            return
        items: list[Any]
        batch_ctx = batch_int = batch_sent = None
        if path_type == "batch":
            if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
                to_dlq(
                    -1,
                    Rejection("protocol_violation", "a batch needs a list in `batch`"),
                    _text(rec.value),
                )
                return
            items = body["batch"]
            batch_ctx = body.get("context") if isinstance(body.get("context"), dict) else None
            batch_int = (
                body.get("integrations") if isinstance(body.get("integrations"), dict) else None
            )
            batch_sent = body.get("sentAt") if isinstance(body.get("sentAt"), str) else None
        else:
            items = [body]
        for i, item in enumerate(items):
            result = normalise(
                item,
                path_type=path_type,
                index=i,
                request_id=request_id,
                source_id=source_id,
                received_at=received_at,
                batch_context=batch_ctx,
                batch_integrations=batch_int,
                batch_sent_at=batch_sent,
            )
            if isinstance(result, Event):
                events.append((result, f"{rec.partition}:{rec.offset}:{i}"))
            else:
                to_dlq(i, result, _original_event(rec.value, path_type, i))


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _original_event(body: bytes, path_type: str, index: int) -> str:
    """The bytes of one event exactly as the client sent them."""
    if path_type != "batch":
        return _text(body)
    try:
        return _text(bytes(_raw_batch_decoder.decode(body).batch[index]))
    except (msgspec.DecodeError, IndexError):
        return _text(body)
