"""The set-aside ledger in ``state.db``: it keeps a set-aside record away from its stage for
as long as the log holds the record, and no longer."""

from __future__ import annotations

import time
from pathlib import Path

from clew.log.base import Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.stages.setaside import StageLedger
from clew.topics import EVENTS_TOPIC

HOUR_MS = 3_600_000


def test_entries_for_records_retention_removed_are_forgotten(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic(TopicSpec(EVENTS_TOPIC, 1, retention_ms=HOUR_MS))
    ledger = StageLedger(tmp_path / "state.db")
    try:
        now_ms = time.time_ns() // 1_000_000
        log.append_sync(
            EVENTS_TOPIC,
            [Message(b"old", timestamp_ms=now_ms - 2 * HOUR_MS) for _ in range(3)]
            + [Message(b"new", timestamp_ms=now_ms) for _ in range(2)],
        )
        old, _, _, new, _ = log.read(EVENTS_TOPIC, 0, 0)
        ledger.set_aside("lake", old, "boom")
        ledger.set_aside("profiles", new, "boom")
        assert ledger.forget_retired(log) == 0

        assert log.enforce_retention(now_ms) == 3
        assert ledger.forget_retired(log) == 1
        assert ledger.skipped("lake") == set()
        # A record the log still holds stays set aside.
        assert ledger.skipped("profiles") == {(EVENTS_TOPIC, 0, new.offset)}
    finally:
        ledger.close()
        log.close()
