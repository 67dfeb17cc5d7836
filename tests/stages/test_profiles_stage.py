"""The profiles stage over a real embedded log: one profile per person, rules against wrong
merges, traits and lifetime value, and exactly-once application across a crash."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from _support import WRITE_KEY, wait_for
from clew.backends import open_log
from clew.background import BackgroundServer
from clew.config import Settings
from clew.events import Event
from clew.identity.changes import ProfileChange, ProfileDeleted, decode_change
from clew.log.base import Log, Message
from clew.stages.profiles import ProfilesStage
from clew.stages.runner import StageRunner
from clew.store import SQLiteProfileStore
from clew.topics import CHANGES_TOPIC, EVENTS_TOPIC

_ids = itertools.count()


def event(type_: str, ts: str, **fields: Any) -> Event:
    return Event(
        type=type_,
        message_id=f"m{next(_ids)}",
        timestamp=ts,
        received_at=ts,
        source_id=fields.pop("source_id", "web"),
        **fields,
    )


class Harness:
    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(data_dir=data_dir)
        self.log: Log = open_log(self.settings)
        self.store = SQLiteProfileStore(self.settings.profiles_path)
        self.stage = ProfilesStage(self.store)

    def send(self, *events: Event) -> None:
        self.log.append_sync(
            EVENTS_TOPIC,
            [Message(value=msgspec.json.encode(e), key=e.identity_key) for e in events],
        )

    def run(self) -> None:
        """Process everything in the topic, the way the runner does."""
        consumer = self.log.consumer(self.stage.group, self.stage.topics)
        self.stage.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(500, timeout_s=0.2):
            self.stage.handle(records, consumer)
        consumer.close()

    def profile(self, id_type: str, value: str) -> str | None:
        return self.store.lookup(id_type, value)

    def changes(self) -> list[ProfileChange | ProfileDeleted]:
        out = []
        for p in self.log.end_offsets(CHANGES_TOPIC):
            for rec in self.log.read(CHANGES_TOPIC, p, 0, 100_000):
                change = decode_change(rec.value)
                if change is not None:
                    out.append(change)
        return out

    def close(self) -> None:
        self.store.close()
        self.log.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "data")
    yield harness
    harness.close()


def test_one_person_across_devices_email_and_login_is_one_profile(h: Harness) -> None:
    h.send(
        event("page", "2026-03-01T10:00:00Z", anonymous_id="phone-1"),
        event("page", "2026-03-01T11:00:00Z", anonymous_id="laptop-1"),
        event(
            "identify",
            "2026-03-01T11:05:00Z",
            anonymous_id="laptop-1",
            traits={"email": "Ada@Example.co.uk", "name": "Ada"},
        ),
        event("identify", "2026-03-02T09:00:00Z", anonymous_id="phone-1", user_id="u-ada"),
        event("alias", "2026-03-02T09:00:01Z", user_id="u-ada", previous_id="laptop-1"),
        event(
            "track",
            "2026-03-03T09:00:00Z",
            user_id="u-ada",
            event="Order Completed",
            properties={"revenue": 30.5},
        ),
        event(
            "track",
            "2026-03-04T09:00:00Z",
            anonymous_id="phone-1",
            event="order_completed",
            properties={"revenue": "19.5"},
        ),
    )
    h.run()
    owner = h.profile("user_id", "u-ada")
    assert owner is not None
    for id_type, value in [
        ("anonymous_id", "phone-1"),
        ("anonymous_id", "laptop-1"),
        ("email", "ada@example.co.uk"),
    ]:
        assert h.profile(id_type, value) == owner, f"{id_type}:{value}"
    profile = h.store.get(owner)
    assert profile is not None
    assert profile.traits == {"email": "Ada@Example.co.uk", "name": "Ada"}
    assert profile.computed["total_lifetime_value"] == 50.0
    assert profile.computed["orders_count"] == 2
    assert profile.computed["last_purchase_date"] == "2026-03-04T09:00:00.000Z"
    history = h.store.events(owner, 100)
    assert len(history) == 7, "every event is in the merged profile's history"
    assert history[0].time_ms == max(e.time_ms for e in history), "newest first"
    assert [e.time_ms for e in history] == sorted((e.time_ms for e in history), reverse=True)
    snapshots = [c for c in h.changes() if isinstance(c, ProfileChange)]
    assert snapshots[-1].profile_id == owner
    assert snapshots[-1].computed["orders_count"] == 2
    # The laptop's profile was merged away, and that was announced.
    gone = [c for c in h.changes() if isinstance(c, ProfileDeleted)]
    assert all(c.into == owner for c in gone)


def test_shared_computer_keeps_two_customers_apart(h: Harness) -> None:
    h.send(
        event("identify", "2026-03-01T10:00:00Z", anonymous_id="family-pc", user_id="u-1"),
        event("identify", "2026-03-01T12:00:00Z", anonymous_id="family-pc", user_id="u-2"),
        event(
            "track",
            "2026-03-01T12:01:00Z",
            user_id="u-2",
            event="Order Completed",
            properties={"revenue": 10},
        ),
    )
    h.run()
    one, two = h.profile("user_id", "u-1"), h.profile("user_id", "u-2")
    assert one is not None and two is not None and one != two
    assert h.profile("anonymous_id", "family-pc") == one, "first claim keeps the device"
    p2 = h.store.get(two)
    assert p2 is not None and p2.computed["total_lifetime_value"] == 10


def test_placeholder_email_never_merges_anyone(h: Harness) -> None:
    h.send(
        event(
            "identify",
            "2026-03-01T10:00:00Z",
            anonymous_id="a-1",
            traits={"email": "null@example.com"},
        ),
        event(
            "identify",
            "2026-03-01T10:01:00Z",
            anonymous_id="a-2",
            traits={"email": "null@example.com"},
        ),
        event(
            "identify",
            "2026-03-01T10:02:00Z",
            anonymous_id="a-3",
            traits={"email": "noemail@shop.test"},
        ),
        event(
            "identify",
            "2026-03-01T10:03:00Z",
            anonymous_id="a-4",
            traits={"email": "noemail@shop.test"},
        ),
    )
    h.run()
    owners = {h.profile("anonymous_id", f"a-{n}") for n in range(1, 5)}
    assert len(owners) == 4
    assert h.profile("email", "null@example.com") is None


def test_late_identify_does_not_overwrite_newer_trait(h: Harness) -> None:
    h.send(
        event("identify", "2026-03-02T10:00:00Z", user_id="u-9", traits={"plan": "pro"}),
        event("identify", "2026-03-01T10:00:00Z", user_id="u-9", traits={"plan": "free", "x": 1}),
    )
    h.run()
    owner = h.profile("user_id", "u-9")
    assert owner is not None
    profile = h.store.get(owner)
    assert profile is not None and profile.traits == {"plan": "pro", "x": 1}


def test_redelivered_batch_after_crash_counts_orders_once(h: Harness) -> None:
    order = event(
        "track",
        "2026-03-03T09:00:00Z",
        user_id="u-7",
        event="Order Completed",
        properties={"revenue": 12},
    )
    h.send(order)
    # Crash after the store transaction committed but before the log commit: the store has
    # the batch and its offsets, the log will redeliver it.
    consumer = h.log.consumer(h.stage.group, h.stage.topics)
    h.stage.on_assign(consumer, consumer.assignment())
    records = consumer.poll(500, timeout_s=0.5)

    class CrashBeforeLogCommit(Exception):
        pass

    def crash(*args: object, **kwargs: object) -> None:
        raise CrashBeforeLogCommit

    consumer.commit = crash  # type: ignore[method-assign]
    with pytest.raises(CrashBeforeLogCommit):
        h.stage.handle(records, consumer)
    consumer.close()

    restarted = ProfilesStage(h.store)
    h.stage = restarted
    h.run()
    owner = h.profile("user_id", "u-7")
    assert owner is not None
    profile = h.store.get(owner)
    assert profile is not None and profile.computed["orders_count"] == 1
    assert restarted.counts["already_applied"] == 1
    assert any(isinstance(c, ProfileChange) and c.profile_id == owner for c in h.changes()), (
        "the redelivered batch announces the profile again"
    )


def test_a_worker_that_missed_a_reassignment_applies_nothing_twice(h: Harness) -> None:
    # Worker A heard of its assignment; then the partition went to worker B and came back to
    # A without A hearing of it (two rebalances between its looks). B applied two orders and
    # died before the log committed them: A reads them again from the log's commit.
    def order(ts: str) -> Event:
        props = {"revenue": 10}
        return event("track", ts, user_id="u-8", event="Order Completed", properties=props)

    h.send(order("2026-03-03T09:00:00Z"), order("2026-03-03T09:01:00Z"))
    consumer = h.log.consumer(h.stage.group, h.stage.topics)
    a, b = ProfilesStage(h.store), ProfilesStage(h.store)
    a.on_assign(consumer, consumer.assignment())
    records = consumer.poll(500, timeout_s=0.5)
    assert len(records) == 2

    class Died(Exception):
        pass

    def die(*args: object, **kwargs: object) -> None:
        raise Died

    b.on_assign(consumer, consumer.assignment())
    consumer.commit = die  # type: ignore[method-assign]
    with pytest.raises(Died):
        b.handle(records, consumer)
    del consumer.commit
    applied = h.store.load_offsets(h.stage.group)

    a.handle(records[:1], consumer)
    owner = h.profile("user_id", "u-8")
    assert owner is not None
    profile = h.store.get(owner)
    assert profile is not None and profile.computed["orders_count"] == 2
    assert a.counts["already_applied"] == 1 and a.counts["applied"] == 0
    assert h.store.load_offsets(h.stage.group) == applied, "the store's offsets never go back"
    consumer.close()


def test_stage_runs_under_the_runner(h: Harness) -> None:
    h.send(event("identify", "2026-03-01T10:00:00Z", user_id="u-r", traits={"a": 1}))
    runner = StageRunner(h.log, h.stage, 500)
    runner.start()
    try:
        import time

        deadline = time.monotonic() + 10
        while h.profile("user_id", "u-r") is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
    assert h.profile("user_id", "u-r") is not None


def test_events_over_http_reach_the_profile_api_and_metrics(server: BackgroundServer) -> None:
    batch = [
        {
            "type": "page",
            "anonymousId": "ph-1",
            "name": "Home",
            "timestamp": "2026-05-01T10:00:00Z",
        },
        {
            "type": "identify",
            "anonymousId": "ph-1",
            "userId": "u-http",
            "traits": {"email": "Http@Shop.test", "plan": "pro"},
            "timestamp": "2026-05-01T10:01:00Z",
        },
        {
            "type": "track",
            "userId": "u-http",
            "event": "Order Completed",
            "properties": {"revenue": 42.5},
            "timestamp": "2026-05-01T10:02:00Z",
        },
    ]
    r = httpx.post(server.url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200
    token = server.clew.catalog.create_token("profiles-test")
    headers = {"Authorization": f"Bearer {token}"}

    def profile() -> dict[str, Any] | None:
        got = httpx.get(server.url + "/v1/profiles/email:http@shop.test", headers=headers)
        body: dict[str, Any] = got.json()
        ready = got.status_code == 200 and body["computed_traits"].get("orders_count") == 1
        return body if ready else None

    wait_for(profile)
    body = profile()
    assert body is not None
    assert body["traits"] == {"email": "Http@Shop.test", "plan": "pro"}
    assert body["computed_traits"]["total_lifetime_value"] == 42.5
    assert {(i["type"], i["value"]) for i in body["identities"]} == {
        ("anonymous_id", "ph-1"),
        ("user_id", "u-http"),
        ("email", "http@shop.test"),
    }
    for ref in ("anonymous_id:ph-1", "user_id:u-http", f"profile_id:{body['profile_id']}"):
        same = httpx.get(server.url + f"/v1/profiles/{ref}", headers=headers).json()
        assert same["profile_id"] == body["profile_id"], ref
    wait_for(
        lambda: (
            'clew_profiles_events_total{outcome="applied"} 3'
            in httpx.get(server.url + "/metrics").text
        )
    )


def test_profiles_kept_in_memory_follow_writes_of_other_handles(h: Harness) -> None:
    """The stage keeps its working set between batches; another writer (an operator's split,
    an erasure, a second handle in the same process) must not be overwritten by it."""
    consumer = h.log.consumer(h.stage.group, h.stage.topics)
    h.stage.on_assign(consumer, consumer.assignment())

    def apply(*events: Event) -> None:
        h.send(*events)
        h.stage.handle(consumer.poll(500, timeout_s=1.0), consumer)

    apply(event("identify", "2026-03-01T10:00:00Z", user_id="u-1", traits={"plan": "a"}))
    pid = h.profile("user_id", "u-1")
    assert pid is not None
    other = SQLiteProfileStore(h.settings.profiles_path)
    try:
        other.update_traits(pid, lambda t: {**t, "seat": 7})
        apply(event("identify", "2026-03-01T11:00:00Z", user_id="u-1", traits={"plan": "b"}))
        assert other.get(pid).traits == {"plan": "b", "seat": 7}  # type: ignore[union-attr]
        assert other.delete_profile(pid)
    finally:
        other.close()
    apply(event("identify", "2026-03-01T12:00:00Z", user_id="u-1", traits={"plan": "c"}))
    again = h.store.get(h.profile("user_id", "u-1") or "")
    assert again is not None and again.traits == {"plan": "c"}
    assert again.first_seen_ms == again.last_seen_ms  # a new profile, not the deleted one
    # Through the stage's own handle too.
    h.store.update_traits(again.profile_id, lambda t: {**t, "seat": 1})
    apply(event("track", "2026-03-01T13:00:00Z", user_id="u-1", event="Viewed"))
    assert h.store.get(again.profile_id).traits == {"plan": "c", "seat": 1}  # type: ignore[union-attr]
    consumer.close()
