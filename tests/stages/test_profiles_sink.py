"""The profiles-lake stage: events sent over HTTP show up as one ``customer_profiles`` row per
person, with identities and their provenance, within seconds; merged-away profiles disappear;
replays and out-of-order snapshots leave the same tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _support import WRITE_KEY, make_settings, wait_for
from clew.background import BackgroundServer
from clew.config import LakeSettings
from clew.identity.changes import (
    IdentityRow,
    ProfileChange,
    ProfileDeleted,
    encode_change,
)
from clew.lake.query import Lake
from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.stages.profiles_sink import ProfilesSinkStage
from clew.topics import CHANGES_TOPIC

DOCS = Path(__file__).parents[2] / "docs" / "identity.md"
PROFILE_COLUMNS = (
    "profile_id, identifiers, user_id, email, first_seen, last_seen, total_lifetime_value, "
    "orders_count, last_purchase_date, traits, merged_ids"
)


def _ev(type_: str, mid: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "messageId": mid, "timestamp": ts, **fields}


STORY = [
    _ev("page", "m1", "2026-03-01T10:00:00Z", anonymousId="ada-phone", name="Home"),
    _ev("page", "m2", "2026-03-01T11:00:00Z", anonymousId="ada-laptop", name="Home"),
    _ev(
        "identify",
        "m3",
        "2026-03-01T11:05:00Z",
        anonymousId="ada-laptop",
        traits={"email": "Ada@Shop.test", "name": "Ada"},
    ),
    _ev("identify", "m4", "2026-03-02T09:00:00Z", anonymousId="ada-phone", userId="u-ada"),
    _ev("alias", "m5", "2026-03-02T09:00:01Z", userId="u-ada", previousId="ada-laptop"),
    _ev(
        "track",
        "m6",
        "2026-03-03T09:00:00Z",
        userId="u-ada",
        event="Order Completed",
        properties={"revenue": 30.5},
    ),
    _ev(
        "track",
        "m7",
        "2026-03-04T09:00:00Z",
        anonymousId="ada-phone",
        event="order_completed",
        properties={"revenue": "19.5"},
    ),
    _ev(
        "identify",
        "m8",
        "2026-03-05T08:00:00Z",
        userId="u-bob",
        anonymousId="bob-1",
        traits={"email": "test@test.com", "plan": "pro"},
    ),
    _ev(
        "track",
        "m9",
        "2026-03-05T08:30:00Z",
        userId="u-bob",
        event="Order Completed",
        properties={"total": 10},
    ),
]


def _sql(lake: Lake, query: str) -> list[tuple[Any, ...]]:
    return lake.sql(query).rows


def _profiles(lake: Lake) -> list[tuple[Any, ...]]:
    return _sql(lake, f"SELECT {PROFILE_COLUMNS} FROM customer_profiles ORDER BY profile_id")


def _identities(lake: Lake) -> list[tuple[Any, ...]]:
    return _sql(lake, "SELECT * EXCLUDE (updated_at) FROM identities ORDER BY id_type, value")


def test_empty_profile_tables_are_queryable(server: BackgroundServer) -> None:
    token = server.clew.catalog.create_token("analyst")
    r = httpx.post(
        server.url + "/v1/sql",
        json={
            "query": "SELECT count(*) FROM customer_profiles UNION ALL "
            "SELECT count(*) FROM identities"
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[0], [0]]


@pytest.fixture
def story_server(tmp_path: Path) -> Iterator[BackgroundServer]:
    """A server whose log has one partition: the profiles stage sees the story's events in
    the order they were sent (with several partitions, a poll can see a person's later events
    before earlier ones that sit in a partition not read yet)."""
    settings = make_settings(tmp_path / "data")
    settings.log.partitions = 1
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        yield srv


def test_profiles_and_identities_reach_the_lake_within_seconds(
    story_server: BackgroundServer,
) -> None:
    server = story_server
    r = httpx.post(server.url + "/v1/batch", json={"batch": STORY}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200, r.text
    lake = Lake(server.settings.lake_path)

    def settled() -> bool:
        rows = _sql(lake, "SELECT user_id, orders_count FROM customer_profiles ORDER BY 1")
        return rows == [("u-ada", 2), ("u-bob", 1)]

    wait_for(settled, timeout_s=15)
    token = server.clew.catalog.create_token("analyst")
    r = httpx.post(
        server.url + "/v1/sql",
        json={
            "query": "SELECT user_id, email, identifiers, total_lifetime_value, orders_count, "
            "strftime(last_purchase_date, '%Y-%m-%d'), traits->>'name' "
            "FROM customer_profiles ORDER BY user_id"
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [
        [
            "u-ada",
            "ada@shop.test",
            [
                "anonymous_id:ada-laptop",
                "anonymous_id:ada-phone",
                "email:ada@shop.test",
                "user_id:u-ada",
            ],
            50.0,
            2,
            "2026-03-04",
            "Ada",
        ],
        # A placeholder email is never an identifier.
        ["u-bob", None, ["anonymous_id:bob-1", "user_id:u-bob"], 10.0, 1, "2026-03-05", None],
    ]

    # The phone's and the laptop's profiles were merged into Ada's: they are listed there and
    # have no row of their own.
    (ada_id, merged), *_ = _sql(
        lake, "SELECT profile_id, merged_ids FROM customer_profiles WHERE user_id = 'u-ada'"
    )
    assert len(merged) >= 1
    gone = _sql(
        lake,
        "SELECT count(*) FROM customer_profiles WHERE list_contains("
        f"(SELECT merged_ids FROM customer_profiles WHERE profile_id = '{ada_id}'), profile_id)",
    )
    assert gone == [(0,)]

    source_id = server.clew.catalog.source_for_key(WRITE_KEY).id  # type: ignore[union-attr]
    rows = _sql(
        lake,
        "SELECT id_type, value, profile_id, message_id, source_id, strftime(time, '%H:%M'), "
        "match_weight, probabilistic FROM identities ORDER BY id_type, value",
    )
    bob_id = _sql(lake, "SELECT profile_id FROM customer_profiles WHERE user_id = 'u-bob'")[0][0]
    assert rows == [
        ("anonymous_id", "ada-laptop", ada_id, "m2", source_id, "11:00", None, False),
        ("anonymous_id", "ada-phone", ada_id, "m1", source_id, "10:00", None, False),
        ("anonymous_id", "bob-1", bob_id, "m8", source_id, "08:00", None, False),
        ("email", "ada@shop.test", ada_id, "m3", source_id, "11:05", None, False),
        ("user_id", "u-ada", ada_id, "m4", source_id, "09:00", None, False),
        ("user_id", "u-bob", bob_id, "m8", source_id, "08:00", None, False),
    ]

    # The example queries of docs/identity.md run, and find Ada by her email.
    queries = DOCS.read_text().split("```sql\n")[1].split("```")[0].split(";")
    results = [lake.sql(q).rows for q in queries if q.strip()]
    assert len(results) == 3
    assert {row[1] for row in results[1]} == {"ada-laptop", "ada-phone", "ada@shop.test", "u-ada"}

    # Replaying the whole changes topic (a new consumer group) leaves the same tables.
    wait_for(server.clew.drained, timeout_s=15)
    before = (_profiles(lake), _identities(lake))
    replay = ProfilesSinkStage(server.settings.lake_path, server.settings.lake)
    consumer = server.clew.log.consumer("profiles-lake-replay", [CHANGES_TOPIC])
    try:
        replay.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(1, 0.2):  # one change per flush
            replay.handle(records, consumer)
            replay.close(consumer)
    finally:
        consumer.close()
    assert replay.flushes >= 2
    assert (_profiles(lake), _identities(lake)) == before


def _snapshot(pid: str, at: str, *values: str) -> ProfileChange:
    return ProfileChange(
        profile_id=pid,
        first_seen="2026-03-01T10:00:00.000Z",
        last_seen=at,
        identities=[
            IdentityRow("anonymous_id", v, f"m-{v}", "src", "2026-03-01T10:00:00.000Z")
            for v in values
        ],
        traits={},
        computed={},
        merged_ids=[],
        changed_at=at,
    )


def test_snapshots_read_out_of_order_never_move_an_identifier_back(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic(TopicSpec(CHANGES_TOPIC, 1))
    try:
        # "x" moved from profile P to profile B at 12:00, and P was merged into B. The stage
        # reads B's newer snapshot first, then P's older one, then P's deletion, as it can
        # happen when P's partition lags behind B's.
        changes = [
            _snapshot("B", "2026-03-01T12:00:00.000Z", "b", "x"),
            _snapshot("P", "2026-03-01T11:00:00.000Z", "x", "p"),
            ProfileDeleted("P", "B", "2026-03-01T12:00:00.000Z"),
        ]
        log.append_sync(CHANGES_TOPIC, [Message(encode_change(c)) for c in changes])
        stage = ProfilesSinkStage(tmp_path / "lake", LakeSettings())
        consumer = log.consumer(stage.group, stage.topics)
        stage.on_assign(consumer, consumer.assignment())
        for _ in range(3):  # one change per flush
            stage.handle(consumer.poll(1, 0.5), consumer)
            stage.close(consumer)
        consumer.close()
        lake = Lake(tmp_path / "lake")
        assert _sql(lake, "SELECT value, profile_id FROM identities ORDER BY value") == [
            ("b", "B"),
            ("x", "B"),
        ]
        assert _sql(lake, "SELECT profile_id, identifiers FROM customer_profiles") == [
            ("B", ["anonymous_id:b", "anonymous_id:x"])
        ]
    finally:
        log.close()


def test_other_kinds_of_change_records_are_committed_and_ignored(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic(TopicSpec(CHANGES_TOPIC, 2))
    try:
        log.append_sync(CHANGES_TOPIC, [Message(b'{"kind": "volume_alert", "x": 1}')])
        stage = ProfilesSinkStage(tmp_path / "lake", LakeSettings())
        consumer = log.consumer(stage.group, stage.topics)
        stage.on_assign(consumer, consumer.assignment())
        stage.handle(consumer.poll(10, 0.5), consumer)
        stage.tick(consumer)
        consumer.close()
        assert log.lag(stage.group, CHANGES_TOPIC).total == 0
        assert Lake(tmp_path / "lake").sql("SELECT count(*) FROM customer_profiles").rows == [(0,)]
    finally:
        log.close()
