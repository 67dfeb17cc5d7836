"""Profile change records: a profile whose traits nest deeper than an encoder can go (from
events stored before the Tracking API bounded nesting) still gets its snapshot written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from clew.identity.changes import decode_change, encode_change, snapshot
from clew.nesting import MAX_DEPTH, TOO_DEEP
from clew.store.base import Profile


def test_a_snapshot_of_traits_2000_deep_is_written_cut_at_the_limit() -> None:
    deep: dict[str, Any] = {}
    for _ in range(2000):
        deep = {"k": deep}
    profile = Profile("p-1", 1_000, 2_000, traits={"plan": "pro", "k": deep})
    change = snapshot(profile, datetime(2026, 3, 1, tzinfo=UTC))

    data = encode_change(change)

    traits = orjson.loads(data)["traits"]
    assert traits["plan"] == "pro"
    for _ in range(MAX_DEPTH - 1):
        traits = traits["k"]
    assert traits == {"k": TOO_DEEP}
    assert decode_change(data) is not None
