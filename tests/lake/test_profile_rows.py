"""Rows of ``customer_profiles``: a profile whose traits came from an event stored before the
Tracking API bounded nesting (300 levels, too deep for JSON text) is still written, with
what lies past the limit replaced by a marker, instead of failing its batch forever."""

from __future__ import annotations

from typing import Any

import orjson

from clew.lake._profile_rows import ProfileColumns, profile_columns, traits_json
from clew.nesting import MAX_DEPTH, TOO_DEEP
from clew.store.base import IdentityEdge, Profile, Provenance


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def cut_at(value: Any) -> int:
    """How many objects lie above the marker in a chain of ``{"k": …}``."""
    levels = 0
    while isinstance(value, dict):
        value = value["k"]
        levels += 1
    assert value == TOO_DEEP
    return levels


def test_traits_300_deep_make_a_row_cut_at_the_limit() -> None:
    columns = ProfileColumns()
    traits = {"plan": "pro", "k": nested(300)}
    columns.add_identity("p-1", [("user_id", "u-1")], traits, [])
    (text,) = columns.store_part().column("traits").to_pylist()
    written = orjson.loads(text)
    assert written["plan"] == "pro"
    assert cut_at(written) == MAX_DEPTH
    # The same traits always give the same text: speed layer and rebuild compare equal.
    assert traits_json(traits) == text


def test_the_rebuilds_row_builder_takes_a_profile_with_traits_300_deep() -> None:
    identity = IdentityEdge("user_id", "u-1", Provenance("m-1", "src", 1_000))
    profile = Profile(
        profile_id="p-1",
        identities=(identity,),
        traits={"k": nested(300)},
        first_seen_ms=1_000,
        last_seen_ms=1_000,
    )
    columns, identities = profile_columns([profile], updated_ms=2_000)
    (text,) = columns.store_part().column("traits").to_pylist()
    assert cut_at(orjson.loads(text)) == MAX_DEPTH
    assert identities.table().column("value").to_pylist() == ["u-1"]
