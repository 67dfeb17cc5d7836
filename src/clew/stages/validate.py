"""The validate stage (group ``validate``): splits each raw request into events, checks and
normalises every event, drops exact duplicates by ``messageId``, and routes each event to the
``events`` topic or, with its reason, to the ``dlq`` topic. The outputs and the consumed
offsets are committed in one atomic step, so a crash never duplicates or loses an event.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from clew.dedup import Dedup
from clew.dlq.records import DeadLetter
from clew.events import Event, Rejection, normalise
from clew.log.base import Consumer, Message, Record
from clew.nesting import MAX_DEPTH, may_hold_huge_int, too_deep
from clew.raw_records import UNREADABLE, RawHeaders, Request, read_headers, split_request
from clew.schema.event_checks import Blocked, apply_plan, within_depth, within_int_range
from clew.stages._counters import CounterStore
from clew.stages._plans import PlanCache
from clew.stages.base import Stage
from clew.topics import DLQ_TOPIC, EVENTS_TOPIC, RAW_TOPIC

if TYPE_CHECKING:
    from clew.privacy.pii import PiiPolicy
    from clew.privacy.suppression import Suppression
    from clew.schema import CompiledPlan

_COUNTER_FLUSH_S = 0.25


_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ValidateStage(Stage):
    group = "validate"
    topics = (RAW_TOPIC,)
    max_poll_records = 200

    def __init__(
        self,
        dedup: Dedup,
        dedup_window_hours: float = 24.0,
        counter_store: CounterStore | None = None,
        plans: PlanCache | None = None,
        suppression: Suppression | None = None,
        pii: PiiPolicy | None = None,
    ) -> None:
        self._dedup = dedup
        self._plans = plans
        # Events of a suppressed person that were already in flight when the suppression
        # began are dropped here (counted as "suppressed"), before the plan or the
        # dead-letter queue sees them (a rejected event is checked as sent).
        self._suppression = suppression
        # Personal fields are hashed, truncated or dropped here, before the ``events`` topic:
        # nothing downstream (lake, profiles, destinations) sees the original values.
        self._pii = pii
        self._window_ms = int(dedup_window_hours * 3600_000)
        # The first tick prunes, however recently the machine booted (monotonic time starts
        # near 0 at boot, so a start of 0.0 would skip pruning for the first 600 s of uptime).
        self._last_prune = float("-inf")
        self._counter_store = counter_store
        self._unflushed: Counter[str] = Counter()
        self._last_flush = 0.0
        # Since this stage object was created; the counter store holds the lifetime totals.
        self.counters: Counter[str] = Counter()

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        started = time.perf_counter_ns()
        # Each event as its dedup claim and origin, and its encoded record: encoded as soon as
        # it is checked, so that a poll holds its events' bytes, not all their decoded values
        # (a poll of 200 requests of 100 events peaked at 103 MB of Python objects so, 63 MB
        # encoded at once).
        claims: list[tuple[str, str]] = []
        messages: list[Message] = []
        dead: list[DeadLetter] = []
        counts: Counter[str] = Counter()
        for rec in records:
            self._split(rec, claims, messages, dead, counts)
        now_ms = time.time_ns() // 1_000_000
        dupes = self._dedup.claim(claims, now_ms)
        out_events = (
            [msg for i, msg in enumerate(messages) if i not in dupes] if dupes else messages
        )
        out_dead = [Message(value=_encoder.encode(d), key=d.source_id.encode()) for d in dead]
        consumer.commit(produce={EVENTS_TOPIC: out_events, DLQ_TOPIC: out_dead})
        counts.update(f"dlq_{d.reason}" for d in dead)
        counts["events"] += len(out_events)
        counts["validate_batches"] += 1
        counts["validate_us"] += (time.perf_counter_ns() - started) // 1000
        counts["duplicates"] += len(dupes)
        self.counters.update(counts)
        self._unflushed.update(counts)

    def _flush_counters(self) -> None:
        if self._counter_store is not None and self._unflushed:
            self._counter_store.add(self.group, self._unflushed)
        self._unflushed = Counter()
        self._last_flush = time.monotonic()

    def close(self, consumer: Consumer) -> None:
        self._flush_counters()

    def tick(self, consumer: Consumer) -> None:
        if time.monotonic() - self._last_flush > _COUNTER_FLUSH_S:
            self._flush_counters()
        if time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            self._dedup.prune(time.time_ns() // 1_000_000 - self._window_ms)

    def _split(
        self,
        rec: Record,
        claims: list[tuple[str, str]],
        messages: list[Message],
        dead: list[DeadLetter],
        counts: Counter[str],
    ) -> None:
        head = read_headers(rec)
        received_iso = head.received_at.isoformat()

        def to_dlq(index: int, rej: Rejection, payload: str, **extra: Any) -> None:
            dead.append(
                _dead_letter(rec, head.source_id, received_iso, index, rej, payload, **extra)
            )

        # Each event is decoded on its own, so one the collector's scan let through but that
        # cannot become Python values (invalid UTF-8 in a string, a number out of range) is
        # dead-lettered alone with its exact bytes, not with the whole request.
        try:
            request = split_request(head.path_type, rec.value)
        except UNREADABLE as e:
            reason = (
                "protocol_violation" if isinstance(e, msgspec.ValidationError) else "invalid_json"
            )
            to_dlq(
                -1, Rejection(reason, f"the batch request cannot be read: {e}"), _text(rec.value)
            )
            return
        checks = self._request_checks(rec, head, request)
        # An event's claim is "<source id>/<message id>", its origin "<partition>:<offset>:<i>".
        origin = f"{rec.partition}:{rec.offset}:"
        for i, raw in enumerate(request.events):
            try:
                item = _decoder.decode(raw)
            except UNREADABLE as e:
                rej = Rejection("invalid_json", f"the event cannot be read: {e}")
                to_dlq(i, rej, _text(bytes(raw)))
                continue
            result = self._check_event(checks, item, raw, i, counts)
            if result is None:
                continue
            if isinstance(result, Event):
                claims.append((f"{result.source_id}/{result.message_id}", origin + str(i)))
                messages.append(Message(value=_encoder.encode(result), key=result.identity_key))
            elif isinstance(result, Blocked):
                to_dlq(
                    i,
                    result.rejection,
                    _text(bytes(raw)),
                    violations=result.violations,
                    schema_versions=result.schema_versions,
                    normalized=result.normalized,
                )
            else:
                to_dlq(i, result, _text(bytes(raw)))

    def _request_checks(self, rec: Record, head: RawHeaders, request: Request) -> _RequestChecks:
        """What applies to every event of one raw record, looked up once per record."""
        suppression = self._suppression
        if suppression is not None and not suppression.active:
            suppression = None
        plan = self._plans.plan_for(head.source_id) if self._plans is not None else None
        room = MAX_DEPTH - (2 if head.path_type == "batch" else 0) if too_deep(rec.value) else None
        huge = may_hold_huge_int(rec.value)
        return _RequestChecks(
            head=head,
            request=request,
            plan=plan,
            suppression=suppression,
            # A record stored before the collector bounded nesting may hold events deeper
            # than MAX_DEPTH (counted from the request's root, as the collector does), which
            # the stages after this one cannot all write: each is dead-lettered alone.
            room=room,
            # An integer no 64-bit type holds would stop the stages that write JSON after
            # this one (the profiles lake, the warehouse tables): such an event is
            # dead-lettered.
            huge=huge,
            plain=(
                plan is None and suppression is None and room is None and not huge and not self._pii
            ),
        )

    def _check_event(
        self, checks: _RequestChecks, item: Any, raw: Any, index: int, counts: Counter[str]
    ) -> Event | Rejection | Blocked | None:
        """One decoded event normalised, bounded, checked against the source's plan and with
        its personal fields handled; None when its person is suppressed (counted)."""
        head, request = checks.head, checks.request
        result: Event | Rejection | Blocked = normalise(
            item,
            path_type=head.path_type,
            index=index,
            request_id=head.request_id,
            source_id=head.source_id,
            received_at=head.received_at,
            batch_context=request.context,
            batch_integrations=request.integrations,
            batch_sent_at=request.sent_at,
        )
        if checks.plain:
            # Nothing but the envelope to check (the usual request): done.
            return result
        if checks.room is not None and isinstance(result, Event):
            result = within_depth(result, checks.room)
        if checks.huge and isinstance(result, Event):
            result = within_int_range(result)
        suppression = checks.suppression
        if suppression is not None and (
            suppression.is_suppressed(result)
            if isinstance(result, Event)
            else suppression.is_suppressed_raw(raw, head.path_type, request.context)
        ):
            counts["suppressed"] += 1
            return None
        if isinstance(result, Event) and checks.plan is not None:
            result = apply_plan(checks.plan, result, counts)
        if isinstance(result, Event) and self._pii:
            result = self._pii.apply(result)
        return result


@dataclass(frozen=True, slots=True)
class _RequestChecks:
    head: RawHeaders
    request: Request
    plan: CompiledPlan | None
    suppression: Suppression | None
    room: int | None
    huge: bool
    # Nothing but the envelope to check: no plan, suppression, personal fields, depth or
    # integer bounds to apply.
    plain: bool


def _dead_letter(
    rec: Record,
    source_id: str,
    received_iso: str,
    index: int,
    rej: Rejection,
    payload: str,
    **extra: Any,
) -> DeadLetter:
    return DeadLetter(
        dlq_id=f"{rec.partition}:{rec.offset}:{index}",
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
        **extra,
    )


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
