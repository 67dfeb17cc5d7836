"""Dead-letter queue replay throughput (target: 20k events/s).

The failure story of the governance issue, at volume: an app release stops sending a property
the tracking plan requires, so every track event it sends is dead-lettered; the team pushes a
plan that no longer requires it and replays the queue.

Setup (not timed as replay): the example e-commerce plan (examples/tracking-plan) is pushed
with every track event also requiring ``app_build``; the demo shop's track events (full
context, products arrays) are appended to the ``raw`` topic as the collector would, and the
real validate and lake stages run over them, which fills the ``dlq`` lake table. Then the
plan as shipped is pushed and ``replay_dlq`` runs once over the whole queue: reading the lake,
re-validating against the compiled plan, claiming message ids, appending to ``events`` with
the ledger written ahead and after each batch. The run checks that every event landed once.

    .venv/bin/python bench/replay.py [--events 100000] [--batch-size 2000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from clew.backends import open_log
from clew.config import Settings
from clew.demo import simulate
from clew.dlq.replay import replay_dlq
from clew.dlq.snapshot import DlqFilter
from clew.log.base import Log, Message
from clew.schema import Compatibility, SchemaRegistry, SubjectUpdate, load_plan
from clew.sources import DEFAULT_SOURCE, Catalog
from clew.stages.workers import build_stage

TARGET = 20_000
EXAMPLE = Path(__file__).parents[1] / "examples" / "tracking-plan"
REQUEST_EVENTS = 500


def push(settings: Settings, extra_required: str | None) -> None:
    plan = load_plan(EXAMPLE)
    updates = []
    for s in plan.subjects.values():
        schema = s.schema
        if extra_required and s.subject.startswith("track:"):
            assert isinstance(schema, dict), s.subject
            schema = {**schema, "required": [*schema.get("required", []), extra_required]}
        updates.append(SubjectUpdate(s.subject, schema))
    with SchemaRegistry(settings.registry_path) as registry:
        registry.publish_all(
            plan.source,
            updates,
            enforcement=plan.enforcement,
            compatibility=Compatibility.NONE,
            retire_missing=True,
        )


def track_events(count: int) -> list[dict[str, Any]]:
    shop = simulate(800, 7, datetime(2026, 1, 5, tzinfo=UTC), "bench").events
    tracks = [e for e in shop if e["type"] == "track"]
    return [{**tracks[i % len(tracks)], "messageId": f"bench-{i}"} for i in range(count)]


def send(log: Log, source_id: str, events: list[dict[str, Any]]) -> None:
    received = str(time.time_ns() // 1000).encode()
    messages = []
    for n, start in enumerate(range(0, len(events), REQUEST_EVENTS)):
        body = {"batch": events[start : start + REQUEST_EVENTS], "sentAt": None}
        headers = (
            ("source", source_id.encode()),
            ("received_at", received),
            ("type", b"batch"),
            ("request_id", f"bench-req-{n}".encode()),
        )
        messages.append(Message(orjson.dumps(body), headers=headers))
    log.append_sync("raw", messages)


def drain(log: Log, settings: Settings, names: tuple[str, ...]) -> None:
    for name in names:
        stage, closers = build_stage(name, settings)
        consumer = log.consumer(stage.group, list(stage.topics))
        try:
            stage.on_assign(consumer, consumer.assignment())
            while records := consumer.poll(max_records=settings.stages.poll_max_records):
                stage.handle(records, consumer)
            stage.close(consumer)
        finally:
            consumer.close()
            for close in closers:
                close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clew-bench-replay-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        settings = Settings(data_dir=data_dir)
        settings.lake.flush_rows = 50_000
        catalog = Catalog.open(settings)
        source_id = catalog.ensure_source(DEFAULT_SOURCE).id
        catalog.close()

        started = time.perf_counter()
        push(settings, extra_required="app_build")
        log = open_log(settings)
        try:
            send(log, source_id, track_events(args.events))
            drain(log, settings, ("validate", "lake"))
            dead = sum(log.end_offsets("dlq").values())
            print(
                f"setup: {dead:,} dead letters in the lake in {time.perf_counter() - started:.1f}s"
            )
            if dead < args.events:
                raise SystemExit(f"expected {args.events:,} dead letters, got {dead:,}")

            push(settings, extra_required=None)
            before = sum(log.end_offsets("events").values())
            cpu = _cpu_seconds()
            report = replay_dlq(settings, DlqFilter(), log=log, batch_size=args.batch_size)
            cpu = _cpu_seconds() - cpu
            landed = sum(log.end_offsets("events").values()) - before
        finally:
            log.close()
    print(
        f"replay: {report.replayed:,} dead letters in {report.elapsed_s:.2f}s: "
        f"{report.landed:,} landed, {report.still_bad:,} still bad, "
        f"{report.duplicates:,} duplicates"
    )
    ok = "meets" if report.events_per_s >= TARGET else "BELOW"
    print(f"replay throughput: {report.events_per_s:,.0f} events/s ({ok} the {TARGET:,}/s target)")
    print(
        f"CPU: {cpu:.2f}s over all threads, {report.replayed / cpu:,.0f} events per CPU-second "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    if landed != report.landed or report.landed != args.events:
        raise SystemExit(f"{landed:,} events appended for {report.landed:,} landed")


if __name__ == "__main__":
    main()
