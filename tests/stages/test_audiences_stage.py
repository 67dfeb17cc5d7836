"""Audiences live in the profiles stage over a real embedded log and SQLite store, with a
manual clock: memberships change with events, absence conditions fire by timer without new
events, exactly once across a restart, and a backfill equals live evaluation."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clew.audiences.changes import AudienceChange, decode
from clew.audiences.definitions import parse_document
from clew.audiences.live import LiveAudiences
from clew.audiences.repository import DefinitionRepository
from clew.backends import open_log
from clew.batch.split import split_profile
from clew.clock import ManualClock
from clew.config import Settings
from clew.events import Event, format_time
from clew.identity.identifiers import ANONYMOUS_ID, Identifier
from clew.log.base import Log, Message
from clew.stages.profiles import ProfilesStage
from clew.store import SQLiteProfileStore
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC

HOUR = 3_600_000
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_ids = itertools.count()

DEFINITIONS = {
    "traits": [
        {"name": "orders_30d", "kind": "count", "event": "Order Completed", "window": "30d"},
        {"name": "spend", "kind": "sum", "event": "Order Completed", "property": "revenue"},
        {"name": "favourite", "kind": "most_frequent", "event": "Product Added",
         "property": "category"},
        {"name": "ltv_365d", "kind": "sum", "event": "Order Completed", "property": "revenue",
         "window": "365d"},
    ],
    "audiences": [
        {"name": "cart_abandoner", "condition": {"funnel": {
            "did": "Product Added", "then_not": "Order Completed", "within": "1h"}}},
        {"name": "high_value_customer",
         "condition": {"computed": "ltv_365d", "op": "gte", "value": 500}},
        {"name": "active_last_7_days", "condition": {"event": "*", "within": "7d"}},
        {"name": "lapsed_vip", "condition": {"all": [
            {"audience": "high_value_customer"},
            {"not": {"audience": "active_last_7_days"}}]}},
    ],
}  # fmt: skip


def at(ms: int) -> str:
    return format_time(datetime.fromtimestamp(ms / 1000, tz=UTC))


def track(user: str, name: str, ms: int, **props: Any) -> Event:
    return Event(
        type="track",
        message_id=f"m{next(_ids)}",
        timestamp=at(ms),
        received_at=at(ms),
        source_id="web",
        user_id=user,
        event=name,
        properties=props,
    )


class ListHistory:
    """The events a backfill would read from the lake, here as a list."""

    def __init__(self) -> None:
        self.events_: list[Event] = []

    def events(
        self, applied: Mapping[tuple[str, int], int], keep: Callable[[Event], bool]
    ) -> Iterable[Event]:
        return sorted((e for e in self.events_ if keep(e)), key=lambda e: e.timestamp)


class Harness:
    def __init__(self, data_dir: Path, clock: ManualClock, history: ListHistory) -> None:
        self.settings = Settings(data_dir=data_dir)
        self.clock = clock
        self.repo = DefinitionRepository(data_dir)
        self.log: Log = open_log(self.settings)
        self.store = SQLiteProfileStore(self.settings.profiles_path)
        self.history = history
        self.stage = self._stage()
        self.consumer = self.log.consumer(self.stage.group, self.stage.topics)
        self.stage.on_assign(self.consumer, self.consumer.assignment())

    def _stage(self) -> ProfilesStage:
        live = LiveAudiences(self.repo, self.clock, self.history)
        return ProfilesStage(self.store, clock=self.clock, audiences=live)

    def push(self, doc: dict[str, Any]) -> None:
        self.repo.push(parse_document(doc))
        self.tick()

    def send(self, *events: Event) -> None:
        self.history.events_ += events
        self.log.append_sync(
            EVENTS_TOPIC,
            [Message(value=msgspec.json.encode(e), key=e.identity_key) for e in events],
        )
        while records := self.consumer.poll(500, timeout_s=0.01):
            self.stage.handle(records, self.consumer)

    def tick(self) -> None:
        """What the runner does between polls; the throttles are reset so each call acts."""
        live = self.stage.audiences
        live._last_reload = live._last_timers = 0.0
        self.stage.tick(self.consumer)

    def advance(self, ms: int) -> None:
        self.clock.advance(ms)
        self.tick()

    def computed(self, user: str) -> dict[str, Any]:
        pid = self.store.lookup("user_id", user)
        assert pid is not None
        profile = self.store.get(pid)
        assert profile is not None
        return profile.computed

    def audiences(self, user: str) -> list[str]:
        return list(self.computed(user).get("audiences", []))

    def changes(self) -> list[AudienceChange]:
        out = []
        for p in self.log.end_offsets(CHANGES_TOPIC):
            for rec in self.log.read(CHANGES_TOPIC, p, 0, 100_000):
                change = decode(rec.value)
                if change is not None:
                    out.append(change)
        return out

    def restart(self) -> None:
        self.consumer.close()
        self.stage = self._stage()
        self.consumer = self.log.consumer(self.stage.group, self.stage.topics)
        self.stage.on_assign(self.consumer, self.consumer.assignment())

    def close(self) -> None:
        self.consumer.close()
        self.store.close()
        self.log.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "data", ManualClock(START), ListHistory())
    yield harness
    harness.close()


def audience_log(h: Harness, name: str) -> list[tuple[str, str | None]]:
    return [(c.kind, c.user_id) for c in h.changes() if c.audience == name]


def test_cart_abandoner_enters_when_the_hour_is_up_without_an_event_and_exits_on_order(
    h: Harness,
) -> None:
    h.push(DEFINITIONS)
    h.send(track("ada", "Product Added", START, category="shoes"))
    assert "cart_abandoner" not in h.audiences("ada")
    h.advance(HOUR - 1000)
    assert "cart_abandoner" not in h.audiences("ada")
    h.advance(2000)  # the hour is up: the timer fires, no event needed
    assert "cart_abandoner" in h.audiences("ada")
    h.clock.advance(60_000)
    h.send(track("ada", "Order Completed", h.clock.now_ms(), revenue=80))
    assert "cart_abandoner" not in h.audiences("ada")
    assert audience_log(h, "cart_abandoner") == [
        ("audience_entered", "ada"),
        ("audience_exited", "ada"),
    ]


def test_ordering_within_the_hour_never_enters(h: Harness) -> None:
    h.push(DEFINITIONS)
    h.send(track("bo", "Product Added", START))
    h.clock.advance(30 * 60_000)
    h.send(track("bo", "Order Completed", h.clock.now_ms(), revenue=10))
    h.advance(2 * HOUR)
    assert "cart_abandoner" not in h.audiences("bo")
    assert audience_log(h, "cart_abandoner") == []


def test_windowed_traits_decay_by_timer_and_audiences_follow(h: Harness) -> None:
    h.push(DEFINITIONS)
    h.send(track("cy", "Order Completed", START, revenue=300))
    h.send(track("cy", "Order Completed", START + HOUR, revenue=250))
    c = h.computed("cy")
    assert c["orders_30d"] == 2
    assert c["ltv_365d"] == 550
    assert h.audiences("cy") == ["active_last_7_days", "high_value_customer"]
    h.advance(7 * 24 * HOUR + HOUR)  # a week later, no events: inactive, so a lapsed VIP
    assert h.audiences("cy") == ["high_value_customer", "lapsed_vip"]
    h.advance(30 * 24 * HOUR)
    assert h.computed("cy")["orders_30d"] == 0
    assert h.computed("cy")["spend"] == 550  # no window: it never decays
    h.advance(328 * 24 * HOUR - HOUR // 2)  # a year and 30 minutes after the first order
    assert h.computed("cy")["ltv_365d"] == 250  # the first order left the year
    assert h.audiences("cy") == []


def test_a_timer_set_before_a_restart_fires_after_it_once(h: Harness) -> None:
    h.push(DEFINITIONS)
    h.send(track("di", "Product Added", START))
    h.restart()
    h.advance(HOUR + 1000)
    h.advance(1000)
    h.restart()
    h.advance(1000)
    assert audience_log(h, "cart_abandoner") == [("audience_entered", "di")]


def test_events_in_the_first_batch_after_a_restart_count(h: Harness) -> None:
    h.push(DEFINITIONS)
    h.restart()
    h.send(track("eve", "Product Added", START))
    h.advance(HOUR + 1000)
    assert h.audiences("eve") == ["active_last_7_days", "cart_abandoner"]


def test_a_merge_combines_audience_state(h: Harness) -> None:
    h.push(DEFINITIONS)
    anon = Event(
        type="track",
        message_id="anon-1",
        timestamp=at(START),
        received_at=at(START),
        source_id="web",
        anonymous_id="a-1",
        event="Order Completed",
        properties={"revenue": 400},
    )
    h.send(anon)
    h.send(track("ed", "Order Completed", START + 1000, revenue=200))
    ident = Event(
        type="identify",
        message_id="id-1",
        timestamp=at(START + 2000),
        received_at=at(START + 2000),
        source_id="web",
        anonymous_id="a-1",
        user_id="ed",
    )
    h.send(ident)
    assert h.computed("ed")["ltv_365d"] == 600
    assert "high_value_customer" in h.audiences("ed")


def test_a_split_rederives_each_parts_audiences(h: Harness) -> None:
    h.push(DEFINITIONS)
    h.send(track("mom", "Order Completed", START, revenue=600))
    kid = Event(
        type="identify",
        message_id="kid-1",
        timestamp=at(START + 1000),
        received_at=at(START + 1000),
        source_id="web",
        anonymous_id="kid",
        user_id="mom",  # the shared computer: the kid's browser logged in as mom
    )
    h.send(kid)
    h.send(
        Event(
            type="track",
            message_id="kid-2",
            timestamp=at(START + 2000),
            received_at=at(START + 2000),
            source_id="web",
            anonymous_id="kid",
            event="Product Added",
        )
    )
    assert "high_value_customer" in h.audiences("mom")
    split_profile(
        h.settings,
        "user_id:mom",
        Identifier(ANONYMOUS_ID, "kid"),
        "test",
        store=h.store,
        log=h.log,
    )
    h.advance(HOUR + 5000)  # the split parts are evaluated by the stage right away
    assert h.audiences("mom") == ["active_last_7_days", "high_value_customer"]
    kid_pid = h.store.lookup(ANONYMOUS_ID, "kid")
    assert kid_pid is not None and kid_pid != h.store.lookup("user_id", "mom")
    kid_profile = h.store.get(kid_pid)
    assert kid_profile is not None
    assert kid_profile.computed["audiences"] == ["active_last_7_days", "cart_abandoner"]


def test_backfill_of_a_new_definition_equals_live_evaluation(tmp_path: Path) -> None:
    rng = random.Random(7)
    names = ["Product Added", "Order Completed", "Product Viewed"]
    traffic = []
    for i in range(600):
        user = f"u{rng.randrange(40)}"
        name = rng.choice(names)
        ms = START + i * 5 * 60_000
        traffic.append(
            track(user, name, ms, revenue=rng.randrange(1, 300), category=rng.choice("abc"))
        )
    end = START + 600 * 5 * 60_000

    live = Harness(tmp_path / "live", ManualClock(START), ListHistory())
    live.push(DEFINITIONS)
    for e in traffic:
        live.clock.set(max(live.clock.now_ms(), _ms(e)))
        live.send(e)
        live.tick()
    live.clock.set(end)
    live.tick()

    late = Harness(tmp_path / "late", ManualClock(START), ListHistory())
    for e in traffic:
        late.send(e)
    late.clock.set(end)
    late.push(DEFINITIONS)  # backfilled from history, then live

    users = sorted({e.user_id for e in traffic if e.user_id})
    for user in users:
        a, b = live.computed(user), late.computed(user)
        for key in ("orders_30d", "spend", "favourite", "ltv_365d", "audiences"):
            assert a.get(key) == b.get(key), (user, key)
    assert sum(len(live.audiences(u)) for u in users) > 20
    live.close()
    late.close()


def _ms(e: Event) -> int:
    return int(datetime.fromisoformat(e.timestamp.replace("Z", "+00:00")).timestamp() * 1000)


class LogHistory:
    """The events a backfill would read: those the stage has applied (``applied``), here
    read back from the log (what ``LakeHistory`` does for events the lake does not hold yet)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def events(
        self, applied: Mapping[tuple[str, int], int], keep: Callable[[Event], bool]
    ) -> Iterable[Event]:
        out = []
        for (topic, partition), offset in applied.items():
            for rec in self.log.read(topic, partition, 0, offset + 1):
                event = msgspec.json.decode(rec.value, type=Event)
                if keep(event):
                    out.append(event)
        return out


def test_a_backfill_covers_what_another_worker_of_the_stage_applied(tmp_path: Path) -> None:
    """Two profiles workers share one store. Worker a applies orders before any definition
    exists; then a trait is defined and worker b, which read the stage's offsets before a's
    progress, is the one to backfill it: the backfill must count a's orders too (it reads the
    applied offsets from the store, not b's stale copy), and a then goes live without a
    second backfill."""
    settings = Settings(data_dir=tmp_path / "data")
    clock = ManualClock(START)
    log = open_log(settings)
    store = SQLiteProfileStore(settings.profiles_path)
    repo = DefinitionRepository(settings.data_dir)
    history = LogHistory(log)

    def worker() -> ProfilesStage:
        return ProfilesStage(store, clock=clock, audiences=LiveAudiences(repo, clock, history))

    a, b = worker(), worker()
    consumer = log.consumer(a.group, a.topics)
    b.on_assign(consumer, [])  # b starts first and reads the offsets: nothing applied yet
    a.on_assign(consumer, consumer.assignment())
    orders = [track("ada", "Order Completed", START + i * 1000, revenue=10) for i in range(3)]
    log.append_sync(
        EVENTS_TOPIC, [Message(value=msgspec.json.encode(e), key=e.identity_key) for e in orders]
    )
    while records := consumer.poll(500, timeout_s=0.01):
        a.handle(records, consumer)

    repo.push(parse_document({"traits": [{"name": "orders_n", "kind": "count",
                                          "event": "Order Completed"}]}))  # fmt: skip
    for stage in (b, a):
        stage.audiences._last_reload = 0.0
        stage.tick(consumer)
    pid = store.lookup("user_id", "ada")
    assert pid is not None
    profile = store.get(pid)
    assert profile is not None and profile.computed.get("orders_n") == 3
    assert b.counts["audience_backfilled_events"] == 3
    assert a.counts["audience_backfilled_events"] == 0, "backfilled once, by b"

    late = track("ada", "Order Completed", START + 10_000, revenue=10)
    log.append_sync(EVENTS_TOPIC, [Message(value=msgspec.json.encode(late), key=late.identity_key)])
    while records := consumer.poll(500, timeout_s=0.01):
        a.handle(records, consumer)
    profile = store.get(pid)
    assert profile is not None and profile.computed.get("orders_n") == 4
    consumer.close()
    store.close()
    log.close()
