"""The ``audience_changes`` lake table: every audience and trait change announced on the
``changes`` topic becomes one row, queryable with SQL, however often the record is delivered
or re-sent; profile snapshots on the same topic still fill ``customer_profiles``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clew.audiences.changes import AudienceChange, records
from clew.audiences.engine import ComputedChange
from clew.config import LakeSettings
from clew.identity.changes import IdentityRow, ProfileChange, encode_change
from clew.lake.query import Lake
from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.stages.profiles_sink import ProfilesSinkStage
from clew.store.base import IdentityEdge, Profile, Provenance
from clew.topics import CHANGES_TOPIC

DOCS = Path(__file__).parents[2] / "docs" / "audiences.md"
SECTION = "## The `audience_changes` table"


def _profile(pid: str, **identifiers: str) -> Profile:
    edges = tuple(
        IdentityEdge(t, v, Provenance(f"m-{v}", "src", 0)) for t, v in sorted(identifiers.items())
    )
    return Profile(pid, 0, 0, identities=edges)


ADA = _profile("p-ada", user_id="u-ada", email="ada@shop.test")
BOB = _profile("p-bob", anonymous_id="bob-1")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic(TopicSpec(CHANGES_TOPIC, 2))
    yield log
    log.close()


def _run_stage(log: EmbeddedLog, lake_path: Path) -> ProfilesSinkStage:
    """Run the stage as its runner would until it has read everything, then close it."""
    stage = ProfilesSinkStage(lake_path, LakeSettings())
    consumer = log.consumer(stage.group, stage.topics)
    try:
        stage.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(500, 0.2):
            stage.handle(records, consumer)
        stage.close(consumer)
    finally:
        consumer.close()
    return stage


def _sql(lake_path: Path, query: str) -> list[tuple[Any, ...]]:
    return Lake(lake_path).sql(query).rows


def test_changes_are_rows_with_typed_columns(log: EmbeddedLog, tmp_path: Path) -> None:
    now = _now_ms()
    log.append_sync(
        CHANGES_TOPIC,
        records(
            ADA,
            [
                ComputedChange("audience_entered", "cart_abandoner"),
                ComputedChange(
                    "trait_changed", "lifetime_value", {"amount": 42.5, "currency": "EUR"}, 10
                ),
            ],
            now,
            "event",
        )
        + records(BOB, [ComputedChange("audience_exited", "cart_abandoner")], now + 1, "timer"),
    )
    _run_stage(log, tmp_path / "lake")

    rows = _sql(
        tmp_path / "lake",
        "SELECT kind, profile_id, user_id, audience, trait, value, previous, cause, "
        "epoch_ms(changed_at), identifiers, changed_date "
        "FROM audience_changes ORDER BY changed_at, kind",
    )
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    ada_ids = '{"email":["ada@shop.test"],"user_id":["u-ada"]}'
    assert rows == [
        (
            "audience_entered",
            "p-ada",
            "u-ada",
            "cart_abandoner",
            None,
            None,
            None,
            "event",
            now,
            ada_ids,
            today,
        ),
        (
            "trait_changed",
            "p-ada",
            "u-ada",
            None,
            "lifetime_value",
            '{"amount":42.5,"currency":"EUR"}',
            "10",
            "event",
            now,
            ada_ids,
            today,
        ),
        (
            "audience_exited",
            "p-bob",
            None,
            "cart_abandoner",
            None,
            None,
            None,
            "timer",
            now + 1,
            '{"anonymous_id":["bob-1"]}',
            datetime.fromtimestamp((now + 1) / 1000, UTC).date(),
        ),
    ]
    # JSON columns are queryable as JSON, and every change id is distinct.
    assert _sql(
        tmp_path / "lake",
        "SELECT value->>'currency', identifiers->'user_id'->>0 FROM audience_changes "
        "WHERE trait = 'lifetime_value'",
    ) == [("EUR", "u-ada")]
    assert _sql(tmp_path / "lake", "SELECT count(DISTINCT change_id) FROM audience_changes") == [
        (3,)
    ]

    # The example query of docs/audiences.md finds Ada, who entered cart_abandoner today.
    section = DOCS.read_text().split(SECTION)[1]
    query = section.split("```sql\n")[1].split("```")[0]
    assert [row[0] for row in _sql(tmp_path / "lake", query)] == ["u-ada"]


def test_redelivered_and_resent_changes_are_stored_once(
    log: EmbeddedLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    now = _now_ms()
    first = records(
        ADA,
        [
            ComputedChange("audience_entered", "cart_abandoner"),
            ComputedChange("audience_entered", "vip"),
        ],
        now,
        "event",
    )
    log.append_sync(CHANGES_TOPIC, first)

    # The stage writes the table, then crashes before its log commit.
    stage = ProfilesSinkStage(lake, LakeSettings())
    consumer = log.consumer(stage.group, stage.topics)
    stage.on_assign(consumer, consumer.assignment())
    stage.handle(consumer.poll(500, 0.5), consumer)

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed before the log commit")

    monkeypatch.setattr(consumer, "commit", crash)
    with pytest.raises(RuntimeError):
        stage.close(consumer)
    consumer.close()
    assert _sql(lake, "SELECT count(*) FROM audience_changes") == [(2,)]
    assert log.lag(stage.group, CHANGES_TOPIC).total == 2

    # The profiles stage re-sends its outbox after its own crash: copies at new offsets, one of
    # them twice, beside a new change.
    later = records(BOB, [ComputedChange("audience_entered", "cart_abandoner")], now + 5, "event")
    log.append_sync(CHANGES_TOPIC, first + first[:1] + later)

    # A new member of the group gets the uncommitted records again, and the copies.
    _run_stage(log, lake)
    assert log.lag(stage.group, CHANGES_TOPIC).total == 0
    assert _sql(
        lake, "SELECT profile_id, audience FROM audience_changes ORDER BY profile_id, audience"
    ) == [("p-ada", "cart_abandoner"), ("p-ada", "vip"), ("p-bob", "cart_abandoner")]

    # Replaying the whole topic (a new consumer group) adds nothing either.
    replay = ProfilesSinkStage(lake, LakeSettings())
    consumer = log.consumer("profiles-lake-replay", [CHANGES_TOPIC])
    try:
        replay.on_assign(consumer, consumer.assignment())
        while polled := consumer.poll(1, 0.2):  # one record per flush
            replay.handle(polled, consumer)
            replay.close(consumer)
    finally:
        consumer.close()
    assert replay.flushes == 6
    assert _sql(lake, "SELECT count(*), count(DISTINCT change_id) FROM audience_changes") == [
        (3, 3)
    ]


def _snapshot(pid: str, at: str, user_id: str) -> ProfileChange:
    return ProfileChange(
        profile_id=pid,
        first_seen=at,
        last_seen=at,
        identities=[IdentityRow("user_id", user_id, "m1", "src", at)],
        traits={},
        computed={},
        merged_ids=[],
        changed_at=at,
    )


def _encoded(**fields: Any) -> bytes:
    return msgspec.json.encode(AudienceChange(**fields))


def test_mixed_topic_fills_both_tables(log: EmbeddedLog, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    at = "2026-03-01T10:00:00.000Z"
    messages = [
        Message(encode_change(_snapshot("p-ada", at, "u-ada")), key=b"p-ada"),
        Message(
            _encoded(
                kind="audience_entered",
                change_id="c1",
                profile_id="p-ada",
                changed_at=at,
                cause="backfill",
                user_id="u-ada",
                identifiers={"user_id": ["u-ada"]},
                audience="cart_abandoner",
            ),
            key=b"p-ada",
        ),
        Message(encode_change(_snapshot("p-bob", at, "u-bob")), key=b"p-bob"),
        Message(
            _encoded(
                kind="trait_changed",
                change_id="c2",
                profile_id="p-bob",
                changed_at="2026-03-02T00:00:00+01:00",  # 1 March in UTC
                cause="event",
                trait="orders",
                value=2,
                previous=False,
            ),
            key=b"p-bob",
        ),
        # Other kinds of record, and malformed ones, are committed and skipped.
        Message(b'{"kind": "volume_alert", "x": 1}'),
        Message(b'{"kind": "audience_entered", "profile_id": "p-x"}'),
        Message(
            _encoded(
                kind="audience_exited",
                change_id="c3",
                profile_id="p-x",
                changed_at="not a time",
                cause="timer",
                audience="cart_abandoner",
            )
        ),
        Message(b"not json"),
    ]
    log.append_sync(CHANGES_TOPIC, messages)
    stage = _run_stage(log, lake)

    assert log.lag(stage.group, CHANGES_TOPIC).total == 0
    assert (stage.profiles_written, stage.audience_changes_written) == (2, 2)
    assert _sql(lake, "SELECT profile_id, user_id FROM customer_profiles ORDER BY 1") == [
        ("p-ada", "u-ada"),
        ("p-bob", "u-bob"),
    ]
    assert _sql(
        lake,
        "SELECT change_id, kind, audience, trait, value, previous, cause, identifiers, "
        "strftime(changed_at, '%Y-%m-%d %H:%M'), changed_date "
        "FROM audience_changes ORDER BY change_id",
    ) == [
        (
            "c1",
            "audience_entered",
            "cart_abandoner",
            None,
            None,
            None,
            "backfill",
            '{"user_id":["u-ada"]}',
            "2026-03-01 10:00",
            date(2026, 3, 1),
        ),
        (
            "c2",
            "trait_changed",
            None,
            "orders",
            "2",
            "false",
            "event",
            "{}",
            "2026-03-01 23:00",
            date(2026, 3, 1),
        ),
    ]
    assert "audience_changes" in Lake(lake).tables()


def test_the_table_is_queryable_before_any_change(tmp_path: Path) -> None:
    assert _sql(tmp_path / "lake", "SELECT count(*) FROM audience_changes") == [(0,)]


def test_views_give_current_members_and_trait_values(log: EmbeddedLog, tmp_path: Path) -> None:
    now = _now_ms()
    snapshots = [
        Message(
            value=encode_change(_snapshot(pid, "2026-03-01T10:00:00.000Z", uid)), key=pid.encode()
        )
        for pid, uid in (("p-ada", "u-ada"), ("p-bob", "u-bob"))
    ]
    log.append_sync(CHANGES_TOPIC, snapshots)
    log.append_sync(
        CHANGES_TOPIC, records(ADA, [ComputedChange("audience_entered", "vip")], now, "event")
    )
    log.append_sync(
        CHANGES_TOPIC,
        records(ADA, [ComputedChange("audience_entered", "cart"),
                      ComputedChange("trait_changed", "n", 1, 0)], now + 1, "event"),
    )  # fmt: skip
    log.append_sync(
        CHANGES_TOPIC,
        records(ADA, [ComputedChange("audience_exited", "cart"),
                      ComputedChange("trait_changed", "n", 2, 1)], now + 2, "timer"),
    )  # fmt: skip
    # A profile the lake does not know as live (merged away or deleted) is left out.
    gone = _profile("p-gone", user_id="u-gone")
    log.append_sync(
        CHANGES_TOPIC, records(gone, [ComputedChange("audience_entered", "vip")], now, "event")
    )
    _run_stage(log, tmp_path / "lake")
    assert _sql(tmp_path / "lake", "SELECT profile_id, audience FROM audience_members") == [
        ("p-ada", "vip")
    ]
    assert _sql(tmp_path / "lake", "SELECT profile_id, trait, value FROM computed_traits") == [
        ("p-ada", "n", "2")
    ]
