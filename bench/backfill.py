"""Audience backfill: how fast a newly pushed set of definitions is computed over history.

The real profiles stage (embedded log, SQLite serving store) first applies ``--events`` shop
events of ``--people`` people with no definitions (the baseline: the live stage's own rate);
then ``_shop.DEFINITIONS`` (20 computed traits, 20 audiences) is pushed and the stage's next
look backfills it: every event of history folded into the new state, then every profile
evaluated and announced. History is handed over in memory, so the lake read (DuckDB over the
``events`` table, a few seconds per million rows) is not included.

    .venv/bin/python bench/backfill.py [--events 50000] [--people 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import msgspec

from _shop import DEFINITIONS, Shop, iso
from clew.audiences.definitions import parse_document
from clew.audiences.live import LiveAudiences
from clew.audiences.repository import DefinitionRepository
from clew.backends import open_log
from clew.clock import ManualClock
from clew.config import Settings
from clew.events import Event
from clew.log.base import Message
from clew.stages.profiles import ProfilesStage
from clew.store import SQLiteProfileStore
from clew.topics import EVENTS_TOPIC

T0 = 1_767_225_600_000


class _History:
    def __init__(self, events: list[Event]) -> None:
        self._events = events

    def events(
        self, applied: Mapping[tuple[str, int], int], keep: Callable[[Event], bool]
    ) -> Iterable[Event]:
        return [e for e in self._events if keep(e)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--people", type=int, default=10_000)
    args = parser.parse_args()
    decoder = msgspec.json.Decoder(Event)
    shop = Shop(people=args.people)
    events = []
    for i in range(args.events):
        body = shop.event(iso(T0 + i * 1000))
        body.update(receivedAt=body["timestamp"], sourceId="web")
        events.append(decoder.decode(msgspec.json.encode(body)))
    with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        log = open_log(settings)
        store = SQLiteProfileStore(settings.profiles_path)
        clock = ManualClock(T0 + args.events * 1000)
        repo = DefinitionRepository(settings.data_dir)
        live = LiveAudiences(repo, clock, _History(events))
        stage = ProfilesStage(store, clock=clock, audiences=live)
        for i in range(0, len(events), 2000):
            chunk = events[i : i + 2000]
            log.append_sync(
                EVENTS_TOPIC, [Message(msgspec.json.encode(e), e.identity_key) for e in chunk]
            )
        consumer = log.consumer(stage.group, stage.topics)
        stage.on_assign(consumer, consumer.assignment())
        started = time.perf_counter()
        while records := consumer.poll(500, 0.05):
            stage.handle(records, consumer)
        live_s = time.perf_counter() - started
        repo.push(parse_document(DEFINITIONS))
        started = time.perf_counter()
        stage.audiences.reload(store, settings.identity.rules, lambda: {}, force=True)
        backfill_s = time.perf_counter() - started
        profiles = len(store.scan(None, 1 << 30))
        consumer.close()
        store.close()
        log.close()
    live_rate, backfill_rate = args.events / live_s, args.events / backfill_s
    print(f"{args.events:,} events, {profiles:,} profiles")
    print(f"live stage, no definitions (baseline): {live_rate:,.0f} events/s")
    print(
        f"backfill of 20 traits + 20 audiences: {backfill_s:.1f} s = {backfill_rate:,.0f} "
        f"events/s, every profile evaluated ({backfill_rate / live_rate:.2f} of the baseline; "
        f"{1e6 / backfill_rate / 60:.1f} minutes per million events)"
    )


if __name__ == "__main__":
    main()
