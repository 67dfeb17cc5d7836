"""The lake sink's row building and person index are written for speed; these properties
hold them to the plain versions they replaced, kept below as the reference: the same Arrow
columns, the same index keys, the same tokens and the same index file contents."""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from hashlib import blake2b
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import astuple

from clew.identity.rules import CustomIdType, IdentityRules
from clew.lake import tables
from clew.lake._index_keys import (
    NULL_DAY,
    _column,
    _loads,
    _scatter,
    candidates,
    event_keys,
    phone_bucket,
)
from clew.lake.person_index import TABLE_IDS, PersonIndex

# -- the references: the code as it was before it was tuned ---------------------------------


def reference_event_columns(values: Sequence[bytes]) -> dict[str, pa.Array]:
    docs = tables._lake_event_decoder.decode(b"[" + b",".join(values) + b"]")
    names = tables._LakeEvent.__struct_fields__
    by_field = list(zip(*map(astuple, docs), strict=True)) or [()] * len(names)

    def field(key: str) -> Any:
        return by_field[names.index(key)]

    def raw_column(raws: Sequence[msgspec.Raw]) -> pa.Array:
        lengths = pa.array(map(len, raws), pa.int64(), size=len(raws))
        offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(lengths)])
        data = pa.py_buffer(b"".join(raws))
        binary = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(raws), [None, offsets.buffers()[1], data]
        )
        text = binary.cast(pa.large_string()).cast(pa.string())
        return pc.if_else(pc.equal(text, "null"), "{}", text)

    cols: dict[str, pa.Array] = {}
    for col, key in tables._EVENT_STRINGS.items():
        cols[col] = pa.array(field(key), pa.string())
    for col, key in tables._EVENT_TIMES.items():
        cols[col] = pa.array(field(key), pa.string()).cast(tables._TS)
    for col in tables._EVENT_JSON:
        cols[col] = raw_column(field(col))
    cols["event_date"] = cols["timestamp"].cast(pa.date32())
    return cols


def reference_event_keys(rows: pa.Table, rules: IdentityRules) -> set[tuple[str, str, int]]:
    day = pc.fill_null(pc.cast(_column(rows, "event_date"), pa.int32()), NULL_DAY)
    keyed: set[tuple[str, str, int]] = set()

    def distinct(
        values: Any, days: Any, kinds: Sequence[str], norm: Callable[[str], str] = str
    ) -> None:
        values = pc.utf8_trim_whitespace(values)
        nonempty = pc.fill_null(pc.greater(pc.utf8_length(values), 0), False)
        if not pc.any(nonempty).as_py():
            return
        kept, when = pc.filter(values, nonempty).to_pylist(), pc.filter(days, nonempty).to_pylist()
        pairs = set(zip(kept, when, strict=True))
        for v, d in pairs:
            keyed.update((kind, norm(v), d) for kind in kinds)

    distinct(_column(rows, "user_id"), day, ["user_id"])
    distinct(_column(rows, "anonymous_id"), day, ["anonymous_id"])
    previous = ["user_id", "anonymous_id"]
    if rules.previous_id_type:
        previous.append(rules.previous_id_type)
    distinct(_column(rows, "previous_id"), day, previous)
    slow = pa.repeat(False, rows.num_rows)
    for name in ("traits", "context"):
        text = _column(rows, name)
        for field, kind, norm in (("email", "email", str.lower), ("phone", "phone#", phone_bucket)):
            count = pc.fill_null(pc.count_substring(text, f'"{field}"'), 0)
            has = pc.greater(count, 0)
            if not pc.any(has).as_py():
                continue
            sub = pc.filter(text, has)
            got = pc.struct_field(pc.extract_regex(sub, rf'"{field}"\s*:\s*"(?P<v>[^"\\]*)"'), [0])
            plain = pc.and_(pc.equal(pc.filter(count, has), 1), pc.is_valid(got))
            slow = pc.or_(slow, pc.and_(has, pc.invert(_scatter(plain, has))))
            distinct(pc.filter(got, plain), pc.filter(pc.filter(day, has), plain), [kind], norm)
    markers = {path.rsplit(".", 1)[-1] for c in rules.custom_ids for path in c.paths}
    for name in ("traits", "context", "properties"):
        keys = markers | ({"externalIds", "clew"} if name == "context" else set())
        if keys:
            pattern = "|".join(f'"{re.escape(k)}"' for k in sorted(keys))
            hit = pc.match_substring_regex(_column(rows, name), pattern)
            slow = pc.or_(slow, pc.fill_null(hit, False))
    picked = rows.filter(slow)
    for row, d in zip(picked.to_pylist(), pc.filter(day, slow).to_pylist(), strict=True):
        doc = {
            "userId": row.get("user_id"),
            "anonymousId": row.get("anonymous_id"),
            "previousId": row.get("previous_id"),
            "traits": _loads(row.get("traits")),
            "context": _loads(row.get("context")),
            "properties": _loads(row.get("properties")),
        }
        keyed.update((t, v, d) for t, v in candidates(doc, rules))
    return keyed


def reference_token(key: bytes, id_type: str, value: str) -> bytes:
    return blake2b(f"{id_type}\x00{value}".encode(), key=key, digest_size=8).digest()


# -- inputs ----------------------------------------------------------------------------------

_ids = st.one_of(
    st.none(),
    st.sampled_from(["", " ", "u-1", " u-1 ", "user-2", "a-1", "\t", "Ada@X.test"]),
    st.text(max_size=5),
)
_contacts = st.one_of(
    st.sampled_from(
        [
            "ada@x.test",
            " Ada@X.TEST ",
            'q"uote@x.test',
            "back\\slash@x.test",
            "+44 20 7946 0958",
            "",
        ]
    ),
    st.integers(0, 10**12),
    st.none(),
    st.lists(st.just("x"), max_size=1),
    st.text(max_size=4),
)
_plain = st.one_of(st.text(max_size=4), st.integers(-5, 5), st.none(), st.booleans())


@st.composite
def _object(draw: st.DrawFn, kind: str) -> Any:
    """traits, context or properties: mostly objects holding (or naming) the fields the index
    looks for, sometimes null or absent."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, "absent"]))
    obj: dict[str, Any] = {}
    names = ["email", "phone", "note", "member", "loyalty_id", "nested"]
    if kind == "context":
        names += ["traits", "externalIds", "clew", "library"]
    for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        if name in ("email", "phone", "member", "loyalty_id"):
            obj[name] = draw(_contacts)
        elif name == "note":
            obj[name] = draw(st.sampled_from(["email", '"phone"', "call me", "clew"]))
        elif name == "nested":
            obj[name] = {draw(st.sampled_from(["email", "phone"])): draw(_contacts)}
        elif name == "traits":
            obj[name] = draw(
                st.one_of(st.dictionaries(st.sampled_from(["email", "phone"]), _contacts), _plain)
            )
        elif name == "externalIds":
            entry = st.one_of(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["crm_id", "email"]), "id": _contacts}
                ),
                _plain,
            )
            obj[name] = draw(st.one_of(st.lists(entry, max_size=2), _plain))
        elif name == "clew":
            obj[name] = {
                "match": {
                    "id_type": draw(st.one_of(st.sampled_from(["email", "crm_id"]), _plain)),
                    "value": draw(_contacts),
                }
            }
        else:
            obj[name] = draw(st.sampled_from([{"name": "analytics.js"}, None, 3]))
    return obj


_stamps = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-03-01T10:00:00.000Z",
            "2026-03-01T23:59:59.999Z",
            "2026-03-02T00:00:00.000Z",
            "1970-01-01T00:00:00.000Z",
            "0999-01-01T00:00:00.000Z",
        ]
    ),
)


@st.composite
def _records(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {
        "type": draw(st.sampled_from(["track", "identify", "alias"])),
        "messageId": draw(st.text(max_size=3)),
        "sourceId": "src-1",
        "timestamp": draw(_stamps),
        "receivedAt": "2026-03-01T10:00:00.000Z",
        "userId": draw(_ids),
        "anonymousId": draw(_ids),
        "previousId": draw(_ids),
        "event": draw(st.one_of(st.none(), st.just("Viewed"))),
    }
    for name in ("traits", "context", "properties", "integrations"):
        value = draw(_object(name))
        if value != "absent":
            doc[name] = value
    return orjson.dumps({k: v for k, v in doc.items() if v is not None or draw(st.booleans())})


_RULES = [
    IdentityRules(),
    IdentityRules(
        previous_id_type="legacy_id",
        custom_ids=[
            CustomIdType(id_type="member", paths=["traits.member"]),
            CustomIdType(id_type="loyalty", paths=["properties.loyalty_id", "context.member"]),
        ],
    ),
]

_batches = st.lists(_records(), max_size=12)


@settings(max_examples=400, deadline=None)
@given(values=_batches)
def test_event_rows_match_the_reference(values: list[bytes]) -> None:
    expected = reference_event_columns(values)
    got = tables._event_columns(values)
    assert list(got) == list(expected)
    for name, column in expected.items():
        assert got[name].equals(column), name
    assert tables.to_arrow(tables.EVENTS, values).equals(
        pa.table(expected, schema=tables.EVENTS_SCHEMA)
    )


@settings(max_examples=400, deadline=None)
@given(values=_batches, which=st.sampled_from(range(len(_RULES))))
def test_event_index_keys_match_the_reference(values: list[bytes], which: int) -> None:
    rules = _RULES[which]
    rows = tables.to_arrow(tables.EVENTS, values)
    assert event_keys(rows, rules) == reference_event_keys(rows, rules)


_entries = st.lists(
    st.tuples(
        st.sampled_from(["user_id", "anonymous_id", "email", "phone#", "*", "crm_id", "ü"]),
        st.text(max_size=6),
        st.sampled_from([NULL_DAY, 0, 20_000, 20_001]),
    ),
    max_size=30,
)


def _index_rows(path: Path) -> list[tuple[bytes, int, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT token, tbl, day FROM entries ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.tuples(st.sampled_from(sorted(TABLE_IDS.values())), _entries, st.booleans()),
        max_size=5,
    )
)
def test_the_index_holds_the_reference_token_of_every_entry_added(
    batches: list[tuple[int, list[tuple[str, str, int]], bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lake_index.db"
        index = PersonIndex(path)
        expected: set[tuple[bytes, int, int]] = set()
        try:
            for tbl, entries, forget in batches:
                index.add(tbl, entries if len(entries) % 2 else set(entries), "events", {0: 1})
                key = index._key
                assert index._rows(tbl, entries) == [
                    (reference_token(key, t, v), tbl, d) for t, v, d in entries
                ]
                expected |= {(reference_token(key, t, v), tbl, d) for t, v, d in entries}
                if forget and entries:
                    # A forget makes the writer drop what it remembers of its recent entries.
                    t, v, _ = entries[0]
                    index.forget([(t, v)])
                    gone = reference_token(key, t, v)
                    if t == "email":
                        gone = reference_token(key, t, v.lower())
                    expected = {e for e in expected if e[0] != gone}
                    if len(v) >= 5:
                        star = reference_token(key, "*", v.lower())
                        expected = {e for e in expected if e[0] != star}
                assert _index_rows(path) == sorted(expected)
        finally:
            index.close()
