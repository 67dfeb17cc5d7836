"""The monitor counts ``events`` records through a quick read (:meth:`RecordReader.event_series`)
and per-batch count slots; this property holds it to the plain loop it replaced, kept below
as the reference: the same counts in the same order (series ids are handed out in it), the
same offsets, tallies and latest times, for any mix of records."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from clew.dlq.records import STAGE_FAILURE
from clew.log.base import Record, TopicPartition
from clew.monitor.db import CountBatch
from clew.monitor.records import RecordReader, app_version
from clew.stages.monitor import count_records
from clew.topics import DLQ_TOPIC, EVENTS_TOPIC


def reference_count(
    reader: RecordReader, records: list[Record]
) -> tuple[CountBatch, dict[TopicPartition, int], Counter[str], str, list[str]]:
    batch = CountBatch()
    offsets: dict[TopicPartition, int] = {}
    tally: Counter[str] = Counter()
    latest_event = ""
    latest_dead: list[str] = []
    for rec in records:
        offsets[(rec.topic, rec.partition)] = rec.offset + 1
        dead = rec.topic == DLQ_TOPIC
        obs = reader.dead_letter(rec.value) if dead else reader.event(rec.value)
        if obs is None:
            tally["records_skipped"] += 1
            continue
        if obs.dlq_reason == STAGE_FAILURE:
            tally["records_set_aside"] += 1
            continue
        tally["records_dlq" if dead else "records_events"] += 1
        batch.add(obs)
        if obs.received_at:
            if dead:
                latest_dead.append(obs.received_at)
            elif obs.received_at > latest_event:
                latest_event = obs.received_at
    return batch, offsets, tally, latest_event, latest_dead


_odd = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=3)
)
_app = st.one_of(
    st.fixed_dictionaries({}, optional={"version": st.one_of(_odd, st.just(" 2.1 "))}), _odd
)
_library = st.one_of(
    st.fixed_dictionaries({}, optional={"name": st.one_of(_odd, st.just("ios")), "version": _odd}),
    _odd,
)
_context = st.one_of(
    st.fixed_dictionaries({}, optional={"app": _app, "library": _library, "ip": _odd}),
    _odd,
    st.lists(_odd, max_size=1),
)
_stamps = st.one_of(
    st.sampled_from(
        [
            "2026-03-01T10:00:00.000Z",
            "2026-03-01T10:59:59.999Z",
            "2026-03-01T11:00:00.000Z",
            "2026-03-01T10:00:00+02:00",
            "2026-03-01T10:00:00",
            "not a time",
            "",
        ]
    ),
    _odd,
)


def _mostly(usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` values, and now and then an odd one."""
    return st.integers(0, 5).flatmap(lambda i: _odd if i == 5 else usual)


_usual_context = st.fixed_dictionaries(
    {},
    optional={
        "app": st.fixed_dictionaries(
            {}, optional={"version": _mostly(st.sampled_from(["2.1", " 2.1 ", " ", "", 3]))}
        ),
        "library": st.fixed_dictionaries(
            {"name": _mostly(st.sampled_from(["ios", ""]))},
            optional={"version": _mostly(st.sampled_from(["4", ""]))},
        ),
        "ip": st.just("203.0.113.1"),
    },
)
_received = st.sampled_from(
    ["2026-03-01T10:30:00.000Z", "2026-03-01T10:10:00.000Z", "2026-03-01T11:30:00.000Z"]
)


@st.composite
def _event(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 29)) == 0:
        return draw(st.sampled_from([b"", b"{", b"[]", b"null"]))
    fields = {
        "type": _mostly(st.sampled_from(["track", "page", "identify"])),
        "event": _mostly(st.sampled_from(["Viewed", "x" * 250])),
        "sourceId": _mostly(st.sampled_from(["src-1", "src-2"])),
        "timestamp": _mostly(_stamps),
        "receivedAt": _mostly(_received),
        "context": st.integers(0, 3).flatmap(lambda i: _context if i == 3 else _usual_context),
    }
    doc = {k: draw(v) for k, v in fields.items() if draw(st.integers(0, 9))}
    return orjson.dumps(doc)


@st.composite
def _dead_letter(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {
        "reason": draw(st.sampled_from(["protocol_violation", STAGE_FAILURE])),
        "message": "m",
        "payload": draw(st.sampled_from(['{"type": "track", "event": "E"}', "{", ""])),
        "source_id": "src-1",
        "received_at": draw(st.sampled_from(["2026-03-01T10:00:00+00:00", "bad"])),
    }
    return orjson.dumps(doc)


@st.composite
def _records(draw: st.DrawFn) -> list[Record]:
    out = []
    for offset in range(draw(st.integers(0, 25))):
        dead = draw(st.integers(0, 4)) == 0
        value = draw(_dead_letter() if dead else _event())
        topic = DLQ_TOPIC if dead else EVENTS_TOPIC
        out.append(Record(topic, draw(st.integers(0, 1)), offset, None, value, (), 0))
    return out


@settings(max_examples=500, deadline=None)
@given(records=_records())
def test_counting_matches_the_reference(records: list[Record]) -> None:
    batch, offsets, tally, latest, dead = count_records(RecordReader(), records)
    ref_batch, ref_offsets, ref_tally, ref_latest, ref_dead = reference_count(
        RecordReader(), records
    )
    assert list(batch.counts.items()) == list(ref_batch.counts.items())
    assert list(batch.reasons.items()) == list(ref_batch.reasons.items())
    assert batch.examples == ref_batch.examples
    assert (offsets, tally, latest, dead) == (ref_offsets, ref_tally, ref_latest, ref_dead)


def reference_app_version(context: Any) -> str:
    if not isinstance(context, dict):
        return "unknown"
    app = context.get("app")
    if isinstance(app, dict):
        version = app.get("version")
        if isinstance(version, str | int | float) and not isinstance(version, bool):
            text = str(version).strip()
            if text:
                return text[:200]
    library = context.get("library")
    if isinstance(library, dict):
        name, version = library.get("name"), library.get("version")
        if isinstance(name, str) and name:
            return (f"{name}/{version}" if isinstance(version, str) and version else name)[:200]
    return "unknown"


@settings(max_examples=500, deadline=None)
@given(context=st.one_of(_usual_context, _context))
def test_app_version_matches_the_reference(context: Any) -> None:
    assert app_version(context) == reference_app_version(context)
