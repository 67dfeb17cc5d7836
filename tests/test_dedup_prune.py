"""The dedup window on SQLite: a claim older than the window is pruned, after which the same
``messageId`` is accepted again; a claim inside the window is kept. The validate stage's
``tick`` prunes with ``now - window`` (24 hours by default), at most every 600 s."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest

from clew.dedup import DedupIndex
from clew.log.base import Consumer
from clew.stages.validate import ValidateStage

HOUR_MS = 3600_000
WINDOW_MS = 24 * HOUR_MS
T0 = 1_700_000_000_000


@pytest.fixture
def dedup(tmp_path: Path) -> Iterator[DedupIndex]:
    index = DedupIndex(tmp_path / "state.db")
    yield index
    index.close()


def test_a_claim_older_than_the_window_is_pruned_and_its_id_accepted_again(
    dedup: DedupIndex,
) -> None:
    assert dedup.claim([("src/old", "0:1:0")], T0) == set()
    assert dedup.claim([("src/recent", "0:2:0")], T0 + 2 * HOUR_MS) == set()
    # Both ids are duplicates when seen again from another origin, before any pruning.
    assert dedup.claim([("src/old", "1:9:0"), ("src/recent", "1:9:1")], T0 + 3 * HOUR_MS) == {
        0,
        1,
    }

    now = T0 + WINDOW_MS + HOUR_MS  # "old" is 25 hours old, "recent" 23 hours
    assert dedup.prune(now - WINDOW_MS) == 1

    # The pruned id is accepted again (and claimed anew); the one inside the window is not.
    assert dedup.claim([("src/old", "1:10:0"), ("src/recent", "1:10:1")], now) == {1}
    assert dedup.claim([("src/old", "1:11:0")], now) == {0}


def test_a_claim_exactly_at_the_cutoff_is_kept(dedup: DedupIndex) -> None:
    dedup.claim([("src/edge", "0:1:0")], T0)
    assert dedup.prune(T0) == 0
    assert dedup.claim([("src/edge", "1:1:0")], T0 + 1) == {0}


class _RecordingDedup:
    def __init__(self) -> None:
        self.pruned: list[int] = []

    def claim(self, items: Sequence[tuple[str, str]], now_ms: int) -> set[int]:
        return set()

    def prune(self, older_than_ms: int) -> int:
        self.pruned.append(older_than_ms)
        return 0

    def close(self) -> None:
        pass


def test_the_validate_tick_prunes_with_now_minus_the_window_once_per_interval() -> None:
    recording = _RecordingDedup()
    stage = ValidateStage(recording)  # the default window: 24 hours
    consumer = cast(Consumer, object())  # tick touches the consumer only to commit, never here
    before = time.time_ns() // 1_000_000
    stage.tick(consumer)
    after = time.time_ns() // 1_000_000
    assert len(recording.pruned) == 1
    assert before - WINDOW_MS <= recording.pruned[0] <= after - WINDOW_MS
    # The next tick, well within 600 s of the first, does not prune again.
    stage.tick(consumer)
    assert len(recording.pruned) == 1


def test_the_window_follows_dedup_window_hours() -> None:
    recording = _RecordingDedup()
    stage = ValidateStage(recording, dedup_window_hours=1.5)
    before = time.time_ns() // 1_000_000
    stage.tick(cast(Consumer, object()))
    after = time.time_ns() // 1_000_000
    assert before - 90 * 60_000 <= recording.pruned[0] <= after - 90 * 60_000
