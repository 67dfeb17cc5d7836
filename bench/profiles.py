"""Profiles stage throughput on identify/alias traffic (target: 20k events/s).

Setup (not timed): ``--events`` identify and alias events of ``--people`` people (each with 1-3
devices, an email, a user id, a loyalty id on some identifies, and an alias from the first
device to the user id) are appended to the ``events`` topic of an embedded log, in time order,
as the validate stage would. Then the real profiles stage (SQLite serving store, exactly-once
transactions per batch, change snapshots on the ``changes`` topic) consumes them all.

Baseline in the same run: a stage that polls, decodes the same events and commits offsets with
nothing else, so the ratio shows the cost of identity resolution and the serving store rather
than of the machine.

    .venv/bin/python bench/profiles.py [--events 100000] [--people 20000]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from clew.backends import open_log
from clew.config import Settings
from clew.events import Event, format_time
from clew.log.base import Consumer, Log, Message, Record
from clew.stages.base import Stage
from clew.stages.workers import build_stage
from clew.topics import EVENTS_TOPIC

TARGET = 20_000
_decoder = msgspec.json.Decoder(Event)


def generate(n: int, people: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[Event] = []
    devices = {p: [f"anon-{p}-{d}" for d in range(rng.randint(1, 3))] for p in range(people)}
    for i in range(n):
        p = rng.randrange(people)
        ts = format_time(start + timedelta(milliseconds=i * 50))
        anon = rng.choice(devices[p])
        if rng.random() < 0.15:
            out.append(
                Event(
                    type="alias",
                    message_id=f"m{i}",
                    timestamp=ts,
                    received_at=ts,
                    source_id="bench",
                    user_id=f"user-{p}",
                    previous_id=devices[p][0],
                )
            )
            continue
        traits: dict[str, object] = {"email": f"person{p}@mail.test", "plan": rng.choice("abc")}
        if rng.random() < 0.3:
            traits["loyalty_id"] = f"L{p:07d}"
        out.append(
            Event(
                type="identify",
                message_id=f"m{i}",
                timestamp=ts,
                received_at=ts,
                source_id="bench",
                user_id=f"user-{p}" if rng.random() < 0.6 else None,
                anonymous_id=anon,
                traits=traits,
            )
        )
    return out


class DecodeOnly(Stage):
    group = "baseline"
    topics = (EVENTS_TOPIC,)
    max_poll_records = 500

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        for rec in records:
            _decoder.decode(rec.value)
        consumer.commit()


def drain(log: Log, stage: Stage, total: int) -> tuple[float, float]:
    """Wall and process CPU seconds for ``stage`` to consume ``total`` events."""
    consumer = log.consumer(stage.group, stage.topics)
    stage.on_assign(consumer, consumer.assignment())
    done = 0
    started, cpu = time.perf_counter(), time.process_time()
    while done < total:
        records = consumer.poll(stage.max_poll_records or 500, timeout_s=1.0)
        if not records:
            break
        stage.handle(records, consumer)
        done += len(records)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    consumer.close()
    assert done == total, f"{stage.group} consumed {done} of {total}"
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        settings.log.partitions = 1
        log = open_log(settings)
        events = generate(args.events, args.people)
        for i in range(0, len(events), 2000):
            chunk = events[i : i + 2000]
            log.append_sync(
                EVENTS_TOPIC,
                [Message(value=msgspec.json.encode(e), key=e.identity_key) for e in chunk],
            )
        base_s, _ = drain(log, DecodeOnly(), len(events))
        stage, closers = build_stage("profiles", settings)
        stage_s, stage_cpu = drain(log, stage, len(events))
        for close in closers:
            close()
        log.close()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size_mb = settings.profiles_path.stat().st_size / 2**20
    rate, base_rate = len(events) / stage_s, len(events) / base_s
    print(f"events: {len(events):,} identify/alias of {args.people:,} people")
    print(f"baseline (poll + decode + commit): {base_rate:,.0f} events/s")
    print(f"profiles stage:                    {rate:,.0f} events/s ({stage_s:.1f} s)")
    # On a shared machine the process's CPU time says more than the wall clock.
    print(
        f"  per CPU second of the process:    {len(events) / stage_cpu:,.0f} events "
        f"({stage_cpu:.1f} s of CPU)"
    )
    print(f"ratio to baseline: {rate / base_rate:.2f}")
    print(f"target {TARGET:,} events/s: {'met' if rate >= TARGET else 'NOT met'}")
    print(f"peak RSS {rss_mb:.0f} MB; serving store {size_mb:.0f} MB")


if __name__ == "__main__":
    main()
