"""Verification finds what an erasure left, wherever it is, and says where without repeating
it: a log record, a SQLite file's raw bytes (also in free pages, which erasure then rebuilds),
a Parquet file outside the current Delta snapshot, an old Delta version, the serving store."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clew.backends import open_log
from clew.config import LakeSettings, Settings
from clew.log.base import Log, Message
from clew.privacy.erase import Subject, erase, resolve_subject
from clew.privacy.verify import VerifyReport, verify
from clew.stages.lake_sink import LakeSinkStage
from clew.store import Provenance, SQLiteProfileStore

ADA_USER = "user-ada-1815"
ADA_EMAIL = "ada@analytical.test"


def _event(mid: str, day: int, **who: Any) -> Message:
    doc = {
        "type": "identify",
        "messageId": mid,
        "timestamp": f"2026-03-{day:02d}T10:00:00.000Z",
        "receivedAt": f"2026-03-{day:02d}T10:00:01.000Z",
        "sourceId": "web",
        **who,
    }
    return Message(orjson.dumps(doc), key=mid.encode())


def _sink(settings: Settings, log: Log) -> None:
    stage = LakeSinkStage(settings.lake_path, LakeSettings())
    consumer = log.consumer("lake", ["events", "dlq"])
    stage.on_assign(consumer, consumer.assignment())
    while records := consumer.poll(100, 0.05):
        stage.handle(records, consumer)
    stage.close(consumer)
    consumer.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def setup(settings: Settings) -> Any:
    """Ada and Bob in the log, the lake and the serving store; Ada then erased."""
    log = open_log(settings)
    store = SQLiteProfileStore(settings.profiles_path)
    try:
        events = [
            _event("a1", 1, userId=ADA_USER, traits={"email": ADA_EMAIL}),
            _event("b1", 1, userId="user-bob-2001", traits={"email": "bob@analytical.test"}),
        ]
        log.append_sync("events", events)
        _sink(settings, log)
        for pid, user, email in (
            ("p-ada", ADA_USER, ADA_EMAIL),
            ("p-bob", "user-bob-2001", "b@x.test"),
        ):
            store.attach(pid, "user_id", user, Provenance("m", "web", 1))
            store.attach(pid, "email", email, Provenance("m", "web", 1))
        ada = resolve_subject(store, "user_id", ADA_USER)
        assert erase(settings, ada, store=store, log=log).ok
        yield settings, log, store, ada
    finally:
        store.close()
        log.close()


def _where(report: VerifyReport, ada: Subject) -> list[str]:
    values = [v for _, v in ada.identifiers] + list(ada.profile_ids)
    for trace in report.traces:
        assert not any(v in trace.where for v in values), f"{trace} repeats personal data"
    return [f"{t.store}: {t.where}" for t in report.traces]


def test_an_erased_person_leaves_no_trace(setup: Any) -> None:
    settings, log, store, ada = setup
    report = verify(settings, ada, store=store, log=log)
    assert report.clean, report.traces
    assert len(report.checked) >= 5


def test_planted_traces_are_reported_with_where_they_are(setup: Any) -> None:
    settings, log, store, ada = setup
    data = settings.data_dir
    [pos] = log.append_sync(
        "events", [_event("a9", 9, traits={"email": ADA_EMAIL.upper()}, anonymousId="x-1")]
    )
    with sqlite3.connect(data / "notes.db") as notes:
        notes.execute("CREATE TABLE t (v TEXT)")
        notes.execute("INSERT INTO t VALUES (?)", (f"call {ADA_USER} back",))
    notes.close()
    stray = settings.lake_path / "events" / "event_date=2026-03-09"
    stray.mkdir(parents=True)
    pq.write_table(
        pa.table({"traits": [f'{{"email":"{ADA_EMAIL}"}}', "{}"]}), stray / "stray.parquet"
    )
    store.attach("p-new", "user_id", ADA_USER, Provenance("m", "web", 1))

    where = _where(verify(settings, ada, store=store, log=log), ada)

    assert f"log: topic events, partition {pos.partition}, offset {pos.offset}" in where
    assert any(w.startswith("sqlite: notes.db, byte ") for w in where)
    assert any(w.startswith("sqlite: profiles.db") for w in where)
    assert "lake: lake/events/event_date=2026-03-09/stray.parquet, column traits, 1 row(s)" in where
    assert "serving store: identity index: identifier 2 (user_id)" in where


def test_rows_in_an_old_delta_version_are_found_and_erasure_removes_them(setup: Any) -> None:
    settings, log, store, ada = setup
    log.append_sync("events", [_event("a7", 7, userId=ADA_USER)])
    _sink(settings, log)
    table = str(settings.lake_path / "events")
    DeltaTable(table).delete("message_id = 'a7'")  # gone from the snapshot, not from disk

    where = _where(verify(settings, ada, store=store, log=log), ada)
    assert any(w.startswith("lake: lake/events/event_date=2026-03-07/") for w in where), where

    assert erase(settings, ada, store=store, log=log).ok
    assert verify(settings, ada, store=store, log=log).clean


def test_free_pages_of_an_older_sqlite_file_are_rebuilt_by_erasure(setup: Any) -> None:
    settings, log, store, ada = setup
    legacy = settings.data_dir / "imports.db"
    with sqlite3.connect(legacy) as db:  # deletes without secure_delete, as older files did
        db.execute("CREATE TABLE IF NOT EXISTS scratch (v TEXT)")
        db.execute("INSERT INTO scratch VALUES (?)", (f"{ADA_EMAIL} " * 50,))
    with sqlite3.connect(legacy) as db:
        db.execute("PRAGMA secure_delete = OFF")
        db.execute("DELETE FROM scratch")
    db.close()
    assert not verify(settings, ada, store=store, log=log).clean

    report = erase(settings, ada, store=store, log=log)

    imports = next(s for s in report.stores if s.store == "imports")
    assert imports.error is None and "rebuilt" in imports.detail
    assert verify(settings, ada, store=store, log=log).clean


def test_skipped_files_are_not_scanned(setup: Any) -> None:
    settings, log, store, ada = setup
    request_store = settings.data_dir / "privacy.db"
    with sqlite3.connect(request_store) as db:
        db.execute("CREATE TABLE r (identifier TEXT)")
        db.execute("INSERT INTO r VALUES (?)", (ADA_EMAIL,))
    db.close()
    assert not verify(settings, ada, store=store, log=log).clean
    assert verify(settings, ada, store=store, log=log, skip=[request_store]).clean


def test_old_stray_files_in_the_persons_partitions_go_fresh_ones_stay(setup: Any) -> None:
    settings, log, store, ada = setup
    log.append_sync("events", [_event("a8", 8, userId=ADA_USER)])
    _sink(settings, log)
    folder = settings.lake_path / "events" / "event_date=2026-03-08"
    row = pa.table({"user_id": [ADA_USER]})
    pq.write_table(row, folder / "crashed-write.parquet")  # a write that died long ago
    old = time.time() - 3600
    os.utime(folder / "crashed-write.parquet", (old, old))
    pq.write_table(row, folder / "in-flight.parquet")  # may be a commit about to happen

    assert erase(settings, ada, store=store, log=log).ok

    assert not (folder / "crashed-write.parquet").exists()
    assert (folder / "in-flight.parquet").exists()
    where = _where(verify(settings, ada, store=store, log=log), ada)
    assert where == [
        "lake: lake/events/event_date=2026-03-08/in-flight.parquet, column user_id, 1 row(s)"
    ]


def test_a_store_that_cannot_be_read_is_reported_and_the_rest_still_checked(
    setup: Any,
) -> None:
    settings, log, store, ada = setup
    (settings.data_dir / "imports.db").write_bytes(b"this is not a SQLite file " * 200)
    log.append_sync("raw", [Message(b'{"batch":[{"userId":"stranger-77","n":"\xff"}]}')])

    report = verify(settings, ada, store=store, log=log)

    assert not report.clean
    assert [t.store for t in report.traces] == ["imports"]
    assert report.traces[0].where.startswith("could not be checked (DatabaseError")
    assert [u.where for u in report.unreadable] == ["topic raw, partition 0, offset 0"]
    assert any("searched as bytes" in c for c in report.checked)
    assert any(c.startswith("raw bytes of") for c in report.checked), "later checks ran"
