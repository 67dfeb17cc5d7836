"""One person, one profile with one id, whatever the order of arrival.

A property-based test: random shoppers with random devices, emails, user ids, aliases, orders
and placeholder identifiers the rules must refuse; their events sent in a random order, spread
over log partitions by the log key the collector uses (user id, else anonymous id), read by
one to three profiles workers in random batch sizes and interleavings, with workers crashing
and restarting at random points (before and after the serving store commits). Then:

- the speed layer (the real profiles stage over a SQLite serving store) equals the batch
  layer (``clew rebuild`` over a Delta lake of the same events: its own reconciliation);
- both equal a small reference model written here, independently of Clew's code: events
  applied one by one in event-time order, each joining the profiles of the identifiers it
  carries unless that would give a profile two user ids (a shared family computer), each
  profile's id derived from its most trusted identifier, and totals, seen times and traits
  the sums, minimums, maximums and latest values over the profile's events.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from deltalake import write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clew.backends import open_store
from clew.batch.rebuild import rebuild
from clew.config import Settings, StoreSettings
from clew.events import format_time
from clew.lake.tables import EVENTS, to_arrow
from clew.log.base import Consumer, Message, Record, TopicPartition, partition_for
from clew.stages.profiles import ProfilesStage
from clew.store import Profile, ProfileStore
from clew.topics import EVENTS_TOPIC

START = datetime(2026, 3, 1, tzinfo=UTC)
# The id rule, restated: a profile's id is the UUIDv5 (in Clew's profile namespace) of
# "id_type:value" of its most trusted identifier (user id, then email, then anonymous id;
# ties by value).
NAMESPACE = uuid.UUID("0c6e4b1e-54f4-4bd6-9f0e-2b8f2d1f7a3d")
TRUST = {"user_id": 1, "email": 2, "anonymous_id": 9}
PLACEHOLDERS = ("test@test.com", "nobody@example.com", "undefined")


class Crash(Exception):
    """A worker process dying at a chosen point."""


# --- the world -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    devices: tuple[str, ...]
    user_id: str | None
    email: str | None


@st.composite
def people(draw: st.DrawFn) -> list[Person]:
    out: list[Person] = []
    # A family computer: people who share it, each under their own user id, must never be
    # merged through it (one user id per profile); who keeps it is decided by event time.
    for n in range(draw(st.integers(1, 4))):
        devices = tuple(f"dev-{n}-{d}" for d in range(draw(st.integers(1, 3))))
        if draw(st.booleans()):
            devices += ("family-pc",)
        user_id = f"user-{n}" if draw(st.integers(0, 3)) else None
        email = f"p{n}@shop.test" if draw(st.booleans()) else None
        out.append(Person(devices, user_id, email))
    return out


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Every event of every person, with distinct event times, in event-time order."""
    events: list[dict[str, Any]] = []
    for p in draw(people()):
        for _ in range(draw(st.integers(1, 6))):
            shared = "family-pc" in p.devices and draw(st.booleans())
            device = "family-pc" if shared else draw(st.sampled_from(p.devices))
            kind = draw(st.sampled_from(["page", "identify", "order", "alias", "placeholder"]))
            if kind == "page":
                events.append({"type": "page", "name": "Home", "anonymousId": device})
            elif kind == "order":
                who = {"userId": p.user_id} if p.user_id and draw(st.booleans()) else {}
                consent = draw(st.sampled_from([None, True, False]))
                context = (
                    {"consent": {"categoryPreferences": {"marketing": consent}}}
                    if consent is not None
                    else {}
                )
                events.append(
                    {
                        "type": "track",
                        "event": "Order Completed",
                        "anonymousId": device,
                        **who,
                        "properties": {"revenue": draw(st.integers(1, 500)) / 4},
                        "context": context,
                    }
                )
            elif kind == "identify":
                traits: dict[str, Any] = {"plan": draw(st.sampled_from(["free", "pro", "max"]))}
                if p.email:
                    traits["email"] = p.email.upper() if draw(st.booleans()) else p.email
                who = {"userId": p.user_id} if p.user_id else {}
                events.append({"type": "identify", "anonymousId": device, **who, "traits": traits})
            elif kind == "alias" and p.user_id:
                events.append({"type": "alias", "userId": p.user_id, "previousId": device})
            else:
                # Placeholders are refused as identifiers in every order: they never join two
                # people (everyone who "signs up" with test@test.com stays apart).
                events.append(
                    {
                        "type": "identify",
                        "anonymousId": draw(st.sampled_from([device, "undefined"])),
                        "traits": {"email": draw(st.sampled_from(PLACEHOLDERS))},
                    }
                )
    seconds = draw(st.permutations(range(len(events))))
    for i, (event, at) in enumerate(zip(events, seconds, strict=True)):
        ts = format_time(START + timedelta(seconds=at))
        event.update(messageId=f"m{i:04d}", timestamp=ts, receivedAt=ts, sourceId="src")
    return sorted(events, key=lambda e: e["timestamp"])


# --- the reference model ---------------------------------------------------------------------


@dataclass
class Expected:
    identifiers: frozenset[str]
    first: str
    last: str
    revenue: float = 0.0
    orders: int = 0
    traits: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)

    @property
    def profile_id(self) -> str:
        best = min(self.identifiers, key=lambda i: (TRUST[i.split(":")[0]], i))
        return str(uuid.uuid5(NAMESPACE, best))


def identifiers_of(event: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    if event.get("userId"):
        found.append(f"user_id:{event['userId']}")
    anon = event.get("anonymousId") or (
        event.get("previousId") if event["type"] == "alias" else None
    )
    if anon and anon not in PLACEHOLDERS:
        found.append(f"anonymous_id:{anon}")
    email = str(event.get("traits", {}).get("email", "")).lower()
    if email and email not in PLACEHOLDERS and not email.endswith("@example.com"):
        found.append(f"email:{email}")
    return found


def model(events: Sequence[Mapping[str, Any]]) -> dict[frozenset[str], Expected]:
    """The profiles the events make when applied one by one in event-time order: each
    event's identifiers, most trusted first, join the profiles that own them unless that
    would put two user ids in one profile (then the identifier is left out of the event)."""
    owner: dict[str, int] = {}
    members: dict[int, set[str]] = {}
    into: dict[int, int] = {}
    went: list[int | None] = []

    def live(n: int) -> int:
        while n in into:
            n = into[n]
        return n

    def user_ids(ids: set[str]) -> int:
        return sum(i.startswith("user_id:") for i in ids)

    for event in events:
        ids = sorted(identifiers_of(event), key=lambda i: TRUST[i.split(":")[0]])
        joined: list[int] = []
        new: list[str] = []
        for i in ids:
            held = live(owner[i]) if i in owner else None
            if held is not None and held in joined:
                continue
            have = set(new).union(*(members[n] for n in joined))
            adding = members[held] if held is not None else {i}
            if user_ids(have | adding) > 1:
                continue
            if held is not None:
                joined.append(held)
            else:
                new.append(i)
        if not joined and not new:
            went.append(None)
            continue
        survivor = joined[0] if joined else len(went)
        members.setdefault(survivor, set())
        for n in joined[1:]:
            members[survivor] |= members.pop(n)
            into[n] = survivor
        for i in new:
            members[survivor].add(i)
            owner[i] = survivor
        went.append(survivor)

    out: dict[int, Expected] = {}
    for event, n in zip(events, went, strict=True):  # event-time order
        if n is None:
            continue
        key = live(n)
        ts = event["timestamp"]
        p = out.setdefault(key, Expected(frozenset(members[key]), ts, ts))
        p.last = ts
        if event.get("event") == "Order Completed":
            p.revenue += event["properties"]["revenue"]
            p.orders += 1
        if event["type"] == "identify":
            p.traits.update(event["traits"])
        prefs = event.get("context", {}).get("consent", {}).get("categoryPreferences")
        if prefs:
            p.consent = {"categoryPreferences": prefs}
    return {p.identifiers: p for p in out.values()}


# --- the speed layer, driven as the log would ---------------------------------------------------


class Partitions:
    """The ``events`` topic: records per partition, and a group's committed offsets."""

    def __init__(self, events: Sequence[Mapping[str, Any]], count: int) -> None:
        self.records: dict[int, list[Record]] = {p: [] for p in range(count)}
        for event in events:
            key = str(event.get("userId") or event.get("anonymousId") or event["messageId"])
            part = partition_for(key.encode(), count)
            batch = self.records[part]
            value = orjson.dumps(event)
            batch.append(Record(EVENTS_TOPIC, part, len(batch), key.encode(), value, (), 0))
        self.committed: dict[int, int] = dict.fromkeys(self.records, 0)


class WorkerConsumer(Consumer):
    """One profiles worker's view of the topic: its partitions, its read positions."""

    def __init__(self, topic: Partitions, partitions: list[int]) -> None:
        self.topic = topic
        self.partitions = partitions
        self.position = {p: topic.committed[p] for p in partitions}
        self.crash_on_commit = False

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        out: list[Record] = []
        for p in self.partitions:
            taken = self.topic.records[p][self.position[p] : self.position[p] + max_records]
            out += taken
            self.position[p] += len(taken)
        return out[:max_records] if len(self.partitions) == 1 else out

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        if self.crash_on_commit:
            raise Crash("died after the store committed, before the log did")
        for (_, p), off in (offsets or {}).items():
            self.topic.committed[p] = max(self.topic.committed[p], off)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.position[partition] = offset

    def assignment(self) -> list[TopicPartition]:
        return [(EVENTS_TOPIC, p) for p in self.partitions]

    def close(self) -> None:
        pass


class Worker:
    """One profiles worker process: its own handle on the serving store, which it can lose
    inside a batch (before the store commits)."""

    def __init__(self, store: ProfileStore) -> None:
        self.store = store
        self.crash_in_write_back = False
        write_back = store.write_back

        def crashing(*args: Any, **kwargs: Any) -> None:
            if self.crash_in_write_back:
                raise Crash("died inside the batch, before the store committed")
            write_back(*args, **kwargs)

        store.write_back = crashing  # type: ignore[method-assign]


@dataclass
class Schedule:
    workers: int
    partitions: int
    drain_batch: int  # the batch size once the scheduled steps are done
    steps: list[tuple[int, int, str]]  # (worker, batch size, "ok" | "crash" | "crash-after")


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    workers = draw(st.integers(1, 3))
    partitions = draw(st.integers(workers, 4))
    steps = draw(
        st.lists(
            st.tuples(
                st.integers(0, workers - 1),
                st.integers(1, 8),
                st.sampled_from(["ok", "ok", "ok", "crash", "crash-after"]),
            ),
            max_size=40,
        )
    )
    return Schedule(workers, partitions, draw(st.integers(1, 8)), steps)


def run_speed_layer(
    settings: Settings, arrival: Sequence[Mapping[str, Any]], plan: Schedule
) -> None:
    topic = Partitions(arrival, plan.partitions)
    owned = [list(range(plan.partitions))[w :: plan.workers] for w in range(plan.workers)]
    workers = [Worker(open_store(settings)) for _ in range(plan.workers)]

    def start(w: int) -> tuple[ProfilesStage, WorkerConsumer]:
        stage, consumer = ProfilesStage(workers[w].store), WorkerConsumer(topic, owned[w])
        stage.on_assign(consumer, consumer.assignment())
        return stage, consumer

    running = [start(w) for w in range(plan.workers)]
    try:
        drain = ((w, plan.drain_batch, "ok") for _ in range(200) for w in range(plan.workers))
        steps = [*plan.steps, *drain]
        for w, size, fate in steps:
            stage, consumer = running[w]
            records = consumer.poll(size)
            if not records:
                continue
            workers[w].crash_in_write_back = fate == "crash"
            consumer.crash_on_commit = fate == "crash-after"
            try:
                stage.handle(records, consumer)
            except Crash:
                # The process dies; a new one resumes from the log's committed offsets.
                workers[w].crash_in_write_back = False
                running[w] = start(w)
        assert all(topic.committed[p] == len(topic.records[p]) for p in topic.records), (
            "every event was applied"
        )
    finally:
        for worker in workers:
            worker.store.close()


def speed_profiles(settings: Settings) -> list[Profile]:
    store = open_store(settings)
    try:
        return store.scan(None, 1 << 30)
    finally:
        store.close()


# --- the property ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.slow)])
def store_settings(request: pytest.FixtureRequest) -> Callable[[Path], Settings]:
    """Settings for one example: the embedded SQLite serving store (default suite) or a real
    Redis server (slow suite), each example with a store of its own."""
    if request.param == "sqlite":
        return lambda data_dir: Settings(data_dir=data_dir)
    url = request.getfixturevalue("redis_url")
    return lambda data_dir: Settings(
        data_dir=data_dir,
        store=StoreSettings(backend="redis", redis_url=url, redis_prefix=data_dir.name),
    )


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=histories(), plan=schedules(), data=st.data())
def test_speed_layer_equals_rebuild_equals_model_in_any_order(
    tmp_path_factory: pytest.TempPathFactory,
    store_settings: Callable[[Path], Settings],
    events: list[dict[str, Any]],
    plan: Schedule,
    data: st.DataObject,
) -> None:
    settings_ = store_settings(tmp_path_factory.mktemp("clew"))
    arrival = data.draw(st.permutations(events), label="arrival order")
    run_speed_layer(settings_, arrival, plan)
    assert_speed_layer_equals_rebuild_equals_model(settings_, events)


def assert_speed_layer_equals_rebuild_equals_model(
    settings_: Settings, events: Sequence[Mapping[str, Any]]
) -> None:
    """The serving store of ``settings_``, once the speed layer has applied every one of
    ``events``, holds the profiles of the reference model; and ``clew rebuild`` over a Delta
    lake of the same events (written into ``settings_``'s lake) agrees with the serving store
    by its own reconciliation."""
    expected = model(events)
    got = {
        frozenset(f"{e.id_type}:{e.value}" for e in p.identities): p
        for p in speed_profiles(settings_)
    }
    assert set(got) == set(expected), "profiles are the components of shared identifiers"
    for ids, want in expected.items():
        p = got[ids]
        assert p.profile_id == want.profile_id, f"{sorted(ids)}: id from the most trusted one"
        assert (format_time(_at(p.first_seen_ms)), format_time(_at(p.last_seen_ms))) == (
            want.first,
            want.last,
        )
        assert p.computed.get("orders_count", 0) == want.orders
        assert p.computed.get("consent", {}) == want.consent, "the latest consent state"
        assert p.computed.get("total_lifetime_value", 0.0) == pytest.approx(want.revenue)
        assert {k: v for k, v in p.traits.items() if k == "plan"} == {
            k: v for k, v in want.traits.items() if k == "plan"
        }

    table = to_arrow(EVENTS, [orjson.dumps(e) for e in events])
    lake = settings_.lake_path / EVENTS.name
    write_deltalake(str(lake), table, mode="append", partition_by=["event_date"])
    report = rebuild(settings_, dry_run=True, max_differences=5)
    assert report.profiles == len(expected)
    assert report.reconciliation is not None
    assert report.reconciliation.agree, report.reconciliation.differences


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# --- examples ------------------------------------------------------------------------------------


def family_pc_events() -> list[dict[str, Any]]:
    """Ada signs in on the family computer at 10:00, Bob at 10:05; Ada orders from it."""

    def at(minute: int, mid: str, **fields: Any) -> dict[str, Any]:
        ts = format_time(START + timedelta(minutes=minute))
        return {"messageId": mid, "timestamp": ts, "receivedAt": ts, "sourceId": "src", **fields}

    return [
        at(
            0,
            "ada-1",
            type="identify",
            userId="ada",
            anonymousId="family-pc",
            traits={"plan": "pro"},
        ),
        at(
            5,
            "bob-1",
            type="identify",
            userId="bob",
            anonymousId="family-pc",
            traits={"plan": "free"},
        ),
        at(
            7,
            "ada-2",
            type="track",
            event="Order Completed",
            anonymousId="family-pc",
            properties={"revenue": 30},
        ),
    ]


@pytest.mark.parametrize("arrival", [[0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]])
def test_a_shared_computer_stays_with_who_used_it_first_whatever_arrives_first(
    tmp_path: Path, arrival: list[int]
) -> None:
    events = family_pc_events()
    settings_ = Settings(data_dir=tmp_path)
    run_speed_layer(settings_, [events[i] for i in arrival], Schedule(1, 1, 1, []))
    profiles = {p.profile_id: p for p in speed_profiles(settings_)}
    ada = profiles[str(uuid.uuid5(NAMESPACE, "user_id:ada"))]
    bob = profiles[str(uuid.uuid5(NAMESPACE, "user_id:bob"))]
    assert {f"{e.id_type}:{e.value}" for e in ada.identities} == {
        "user_id:ada",
        "anonymous_id:family-pc",
    }
    assert {f"{e.id_type}:{e.value}" for e in bob.identities} == {"user_id:bob"}
    assert ada.computed["orders_count"] == 1 and bob.computed.get("orders_count", 0) == 0
    assert (ada.traits["plan"], bob.traits["plan"]) == ("pro", "free")


def test_a_profile_whose_history_may_be_incomplete_is_not_repaired(tmp_path: Path) -> None:
    events = family_pc_events()
    settings_ = Settings(data_dir=tmp_path)
    settings_.identity.history = 1  # every profile's history is at the cap
    run_speed_layer(settings_, [events[1], events[0], events[2]], Schedule(1, 1, 1, []))
    holders = {
        p.profile_id: {f"{e.id_type}:{e.value}" for e in p.identities}
        for p in speed_profiles(settings_)
    }
    # Bob's late-arriving rival keeps the computer (arrival order), and the rebuild says so.
    assert "anonymous_id:family-pc" in holders[str(uuid.uuid5(NAMESPACE, "user_id:bob"))]
    table = to_arrow(EVENTS, [orjson.dumps(e) for e in events])
    write_deltalake(str(settings_.lake_path / EVENTS.name), table, partition_by=["event_date"])
    report = rebuild(settings_, dry_run=True)
    assert report.reconciliation is not None and not report.reconciliation.agree
