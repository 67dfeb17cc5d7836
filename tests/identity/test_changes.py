"""Profile change records: a profile whose traits nest deeper than an encoder can go (from
events stored before the Tracking API bounded nesting) still gets its snapshot written; times
are written as ``format_time`` writes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from clew.events import format_time
from clew.identity.changes import _iso, decode_change, encode_change, snapshot
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


# Every instant a datetime holds (years 1 to 9999), and more often the present century.
@given(st.integers(-62_135_596_800_000, 253_402_300_799_999) | st.integers(0, 4_200_000_000_000))
def test_snapshot_times_are_written_as_format_time_writes_them(ms: int) -> None:
    # The time of each identity, and first and last seen, in snapshots: built from the
    # second's text and the milliseconds, which must equal formatting the instant itself.
    assert _iso(ms) == format_time(datetime.fromtimestamp(ms / 1000, tz=UTC))
