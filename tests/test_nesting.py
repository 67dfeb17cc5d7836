"""The nesting limit: the fast check of raw JSON agrees with a parser's depth, the cut copy
keeps everything within the limit, and docs/tracking-api.md states the limit in force."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clew.nesting import MAX_DEPTH, TOO_DEEP, UnencodableJsonError, cut, encode, too_deep

DOCS = Path(__file__).parents[1] / "docs" / "tracking-api.md"

# Strings full of what a naive bracket count trips on: brackets, quotes, backslashes.
tricky = st.text(alphabet='[]{}"\\\\ué', max_size=6)
values = st.recursive(
    st.none() | st.integers(-5, 5) | tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky, inner, max_size=3),
    max_leaves=60,
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


@settings(max_examples=300, deadline=None)
@given(value=values, limit=st.integers(0, 12), ascii_only=st.booleans())
def test_the_check_of_raw_json_agrees_with_the_parsed_depth(
    value: Any, limit: int, ascii_only: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert too_deep(text, limit) == (depth(value) > limit)


def test_a_body_deeper_than_any_parser_goes_is_too_deep_in_little_time() -> None:
    assert too_deep(b"[" * 500_000)
    assert not too_deep(orjson.dumps({"batch": [{"traits": nested(MAX_DEPTH - 3)}]}))
    assert too_deep(orjson.dumps({"batch": [{"traits": nested(MAX_DEPTH - 2)}]}))


def test_encoding_cuts_only_what_is_too_deep_for_json() -> None:
    shallow = {"a": nested(MAX_DEPTH + 10)}
    assert encode(shallow) == orjson.dumps(shallow)  # orjson can write it: unchanged
    deep = {"a": nested(300), "b": [1, {"c": "d"}]}
    written = orjson.loads(encode(deep, orjson.OPT_SORT_KEYS))
    assert written["b"] == [1, {"c": "d"}]
    assert depth(written) == MAX_DEPTH
    inner = written
    for _ in range(MAX_DEPTH - 1):
        inner = inner["a" if "a" in inner else "k"]
    assert inner == {"k": TOO_DEEP}
    assert written == cut(deep)


def test_a_value_no_json_can_hold_raises_a_specific_error() -> None:
    with pytest.raises(UnencodableJsonError, match="set its record aside"):
        encode({"n": 1 << 70})


def test_the_tracking_api_docs_state_the_limit_and_the_marker() -> None:
    text = " ".join(DOCS.read_text().split())
    assert f"at most {MAX_DEPTH} levels deep" in text
    assert f"`{TOO_DEEP}`" in text
