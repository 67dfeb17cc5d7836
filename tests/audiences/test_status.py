"""Audience sizes and backfill states, as the CLI and the Admin API report them, on every
embedded serving-store backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clew.audiences.definitions import parse_document
from clew.audiences.status import BACKFILL_GROUP, audience_size, backfill_key, backfill_state
from clew.store import MemoryProfileStore, ProfileStore, SQLiteProfileStore


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProfileStore]:
    s: ProfileStore = (
        SQLiteProfileStore(tmp_path / "p.db") if request.param == "sqlite" else MemoryProfileStore()
    )
    yield s
    s.close()


def test_audience_size_counts_members_across_pages(store: ProfileStore) -> None:
    for i in range(2500):
        pid = store.touch(f"p{i:05d}", 1)
        audiences = ["buyers"] if i % 3 == 0 else ["buyers_eu"] if i % 3 == 1 else []
        store.update_computed(pid, lambda c, a=audiences: {**c, "audiences": a})
    store.update_computed("p00002", lambda c: {**c, "audiences": "buyers"})  # not a list
    assert audience_size(store, "buyers") == 834
    assert audience_size(store, "buyers_eu") == 833
    assert audience_size(store, "nobody") == 0


def test_backfill_state_is_pending_until_recorded_for_this_version(store: ProfileStore) -> None:
    (v1,) = parse_document({"type": "trait", "name": "n", "kind": "count"})
    (v2,) = parse_document({"type": "trait", "name": "n", "kind": "count", "window": "7d"})
    assert backfill_state(store, v1) is None
    store.save_offsets(BACKFILL_GROUP, {backfill_key(v1): 1_700_000_000_123})
    assert backfill_state(store, v1) == "2023-11-14T22:13:20.123Z"
    assert backfill_key(v1) == (f"n@{v1.fingerprint}", 0)
    assert backfill_state(store, v2) is None
