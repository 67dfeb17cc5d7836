"""The person → partition index: the lake sink keeps it (before each Delta commit, so a crash
never leaves a partition unindexed), it names exactly the partitions that hold a person
without naming anyone in clear, an erasure forgets the person's entries, and an index that
cannot vouch for a table (created after the table had rows) makes erasure read every
partition until it is rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from deltalake import DeltaTable

import clew.stages.lake_sink as lake_sink
from clew.config import LakeSettings, Settings
from clew.identity.rules import CustomIdType, IdentityRules
from clew.lake.person_index import PersonIndex, day_number, index_path
from clew.lake.query import Lake
from clew.lake.tables import sink_app_id
from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.privacy.erase import Subject, erase
from clew.stages.lake_sink import LakeSinkStage
from clew.store import MemoryProfileStore

ADA = ("user_id", "user-ada-1815")
ADA_EMAIL = ("email", "ada@analytical.test")
ADA_PHONE = ("phone", "+442079460958")


def _event(mid: str, day: int, **who: Any) -> Message:
    doc = {
        "type": "track",
        "event": "Viewed",
        "messageId": mid,
        "timestamp": f"2026-03-{day:02d}T10:00:00.000Z",
        "receivedAt": f"2026-03-{day:02d}T10:00:01.000Z",
        "sourceId": "web",
        **who,
    }
    return Message(orjson.dumps(doc), key=mid.encode())


def _story() -> list[Message]:
    return [
        _event("a1", 1, userId=ADA[1]),
        _event("a3", 3, userId=ADA[1], properties={"loyalty_id": "L-77"}),
        _event("a2", 2, anonymousId="anon-ada-1", traits={"email": "Ada@analytical.TEST"}),
        _event(
            "a4", 4, anonymousId="anon-ada-2", context={"traits": {"phone": "+44 20 7946 0958"}}
        ),
        _event("b1", 1, userId="user-bob-2001"),
        _event("b5", 5, userId="user-bob-2001"),
    ]


@pytest.fixture
def log(tmp_path: Path) -> Any:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in ("events", "dlq"):
        log.create_topic(TopicSpec(topic, 2))
    yield log
    log.close()


def _run_sink(
    log: EmbeddedLog, lake: Path, rules: IdentityRules | None = None, stage: Any = None
) -> None:
    stage = stage or LakeSinkStage(lake, LakeSettings(flush_rows=3), rules)
    consumer = log.consumer("lake", ["events", "dlq"])
    try:
        stage.on_assign(consumer, consumer.assignment())
        while records := consumer.poll(200, 0.05):
            stage.handle(records, consumer)
        stage.close(consumer)
    finally:
        consumer.close()


def _versions(lake: Path, table: str = "events") -> dict[int, int]:
    dt = DeltaTable(str(lake / table))
    found = {p: dt.transaction_version(sink_app_id(table, p)) for p in range(2)}
    return {p: v for p, v in found.items() if v is not None}


def _days(*days: int) -> set[int]:
    from datetime import date

    return {day_number(date(2026, 3, d)) for d in days}


def test_the_sink_indexes_each_persons_partitions_without_naming_them(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    log.append_sync("events", _story())
    _run_sink(log, tmp_path / "lake")

    index = PersonIndex(index_path(tmp_path))
    try:
        assert index.partitions([ADA])["events"] == _days(1, 3)
        assert index.partitions([ADA_EMAIL])["events"] == _days(2), "emails in any case"
        assert index.partitions([ADA_PHONE])["events"] == _days(4), "phones however written"
        assert index.partitions([("loyalty_id", "L-77")])["events"] == _days(3)
        assert index.partitions([ADA, ADA_EMAIL])["dlq"] == set()
        assert index.gaps("events", _versions(tmp_path / "lake")) is None
    finally:
        index.close()
    raw = index_path(tmp_path).read_bytes()
    assert b"user-ada" not in raw and b"analytical" not in raw


def test_entries_are_durable_before_the_delta_commit(
    log: EmbeddedLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append_sync("events", _story())

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed between the index and the Delta commit")

    monkeypatch.setattr(lake_sink, "write_deltalake", crash)
    with pytest.raises(RuntimeError):
        _run_sink(log, tmp_path / "lake")
    index = PersonIndex(index_path(tmp_path))
    try:
        assert index.partitions([ADA])["events"], "written before the commit that failed"
        monkeypatch.undo()
        _run_sink(log, tmp_path / "lake")  # the restarted sink writes the batch again
        assert index.partitions([ADA])["events"] == _days(1, 3)
        assert index.gaps("events", _versions(tmp_path / "lake")) is None
    finally:
        index.close()


def test_erasure_forgets_the_persons_entries_and_keeps_everyone_elses(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    log.append_sync("events", _story())
    _run_sink(log, tmp_path / "lake")
    ada = Subject((), (ADA, ADA_EMAIL, ADA_PHONE, ("anonymous_id", "anon-ada-1")))

    report = erase(Settings(data_dir=tmp_path), ada, store=MemoryProfileStore(), log=log)

    assert report.ok, report.stores
    lake = next(s for s in report.stores if s.store == "lake")
    assert lake.removed == 4 and "4 partition(s) rewritten" in lake.detail
    index = PersonIndex(index_path(tmp_path))
    try:
        assert index.entries(ada.identifiers) == 0
        assert index.partitions([("user_id", "user-bob-2001")])["events"] == _days(1, 5)
    finally:
        index.close()
    ids = [r[0] for r in Lake(tmp_path / "lake").sql("SELECT message_id FROM events").rows]
    assert sorted(ids) == ["b1", "b5"]


def test_an_index_that_cannot_vouch_for_a_table_means_a_full_read_until_rebuilt(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    log.append_sync("events", _story())
    _run_sink(log, tmp_path / "lake")
    index_path(tmp_path).unlink()  # lost, or the lake predates it
    ada = Subject((), (ADA,))

    report = erase(Settings(data_dir=tmp_path), ada, store=MemoryProfileStore(), log=log)

    lake = next(s for s in report.stores if s.store == "lake")
    assert lake.removed == 2
    assert "every partition read (the index was created after the table had rows" in lake.detail
    index = PersonIndex(index_path(tmp_path))
    try:
        versions = _versions(tmp_path / "lake")
        assert index.rebuild("events", [tmp_path / "lake"], versions) == 4
        assert index.gaps("events", versions) is None
        assert index.partitions([("user_id", "user-bob-2001")])["events"] == _days(1, 5)
    finally:
        index.close()


def test_custom_id_types_are_covered_only_if_indexed_from_the_start(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    log.append_sync("events", _story())
    rules = IdentityRules(custom_ids=[CustomIdType(id_type="member", paths=["traits.member"])])
    _run_sink(log, tmp_path / "lake", rules)
    index = PersonIndex(index_path(tmp_path))
    try:
        versions = _versions(tmp_path / "lake")
        assert index.gaps("events", versions, {"member"}, {"member": ["traits.member"]}) is None
        gap = index.gaps("events", versions, {"loyalty_id"}, {"loyalty_id": ["traits.loyalty_id"]})
        assert gap is not None and "loyalty_id" in gap
    finally:
        index.close()


def test_a_person_seen_again_after_erasure_is_indexed_again(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    stage = LakeSinkStage(tmp_path / "lake", LakeSettings(flush_rows=3))
    log.append_sync("events", _story())
    _run_sink(log, tmp_path / "lake", stage=stage)
    assert erase(
        Settings(data_dir=tmp_path), Subject((), (ADA,)), store=MemoryProfileStore(), log=log
    ).ok

    # The same sink, which remembers having written Ada's entry for day 1 already.
    log.append_sync("events", [_event("a1-again", 1, userId=ADA[1])])
    _run_sink(log, tmp_path / "lake", stage=stage)

    index = PersonIndex(index_path(tmp_path))
    try:
        assert index.partitions([ADA])["events"] == _days(1)
    finally:
        index.close()


def test_the_fast_extraction_misses_nothing_the_full_one_finds() -> None:
    from clew.identity.identifiers import extract
    from clew.lake.person_index import candidates, event_keys, phone_bucket
    from clew.lake.tables import EVENTS, to_arrow
    from clew.privacy._erase_match import lenient_event

    rules = IdentityRules()
    docs: list[dict[str, Any]] = [
        {"userId": " padded ", "traits": {"email": " Mixed@Case.TEST "}},
        {"anonymousId": "a-1", "traits": {"email": 'quote"d@x.test'}},
        {"anonymousId": "a-2", "traits": {"note": "email", "email": "second@x.test"}},
        {"anonymousId": "a-3", "context": {"traits": {"phone": 442079460958}}},
        {"anonymousId": "a-4", "context": {"externalIds": [{"type": "crm_id", "id": 7}]}},
        {"anonymousId": "a-5", "properties": {"loyalty_id": "L-9"}},
        {
            "anonymousId": "a-6",
            "context": {"clew": {"match": {"id_type": "email", "value": "m@x.test"}}},
        },
        {"type": "alias", "userId": "u-7", "previousId": "old-7"},
        {"anonymousId": "a-8", "traits": {"address": {"email": "nested@x.test"}}},
    ]
    base = {"type": "track", "messageId": "m", "timestamp": "2026-03-01T10:00:00.000Z"}
    rows = to_arrow(EVENTS, [orjson.dumps(base | d) for d in docs])
    fast = event_keys(rows, rules)
    day = next(iter({d for _, _, d in fast}))
    for doc in docs:
        found = set(candidates(base | doc, rules))
        assert found <= {(t, v) for t, v, d in fast if d == day}
        extraction = extract(lenient_event(base | doc), rules)
        for i in (*extraction.identifiers, *([extraction.link] if extraction.link else [])):
            key = (
                ("phone#", phone_bucket(i.value)) if i.id_type == "phone" else (i.id_type, i.value)
            )
            assert key in found, f"{i} is extracted but not indexed"


def test_a_message_id_shared_with_someone_else_removes_only_the_persons_row(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    log.append_sync("events", [*_story(), _event("a1", 1, userId="user-bob-2001")])
    _run_sink(log, tmp_path / "lake")

    report = erase(
        Settings(data_dir=tmp_path), Subject((), (ADA,)), store=MemoryProfileStore(), log=log
    )

    assert report.ok, report.stores
    rows = Lake(tmp_path / "lake").sql("SELECT message_id, user_id FROM events").rows
    assert ("a1", "user-bob-2001") in rows and ("a1", ADA[1]) not in rows
    assert len(rows) == 5
