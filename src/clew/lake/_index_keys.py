"""What the person index records of a row: the identifier candidates of an event or a
dead letter (a superset of identity resolution's, see :mod:`clew.lake.person_index`), the
literals of a JSON text, and the keys of a whole Arrow batch."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from clew.identity.rules import IdentityRules

NULL_DAY = -(1 << 31)
# Literal (unstructured) tokens are kept for values at least this long: shorter ones would
# tie a dead letter to everyone whose id happens to be "42".
MIN_LITERAL = 5
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _text(raw: object) -> str | None:
    if raw is None or isinstance(raw, bool | dict | list):
        return None
    value = (raw if isinstance(raw, str) else str(raw)).strip()
    return value or None


def phone_bucket(value: str) -> str:
    digits = "".join(c for c in value if c.isdigit())
    return digits[-7:]


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _at(doc: Mapping[str, Any], path: str) -> object:
    node: Any = doc
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def candidates(doc: Mapping[str, Any], rules: IdentityRules) -> Iterator[tuple[str, str]]:
    """Every ``(id_type, value)`` the event document (Segment field names) may yield to
    identity resolution, plus phone buckets (``phone#``); see the module docstring."""
    for field, id_type in (("userId", "user_id"), ("anonymousId", "anonymous_id")):
        if (value := _text(doc.get(field))) is not None:
            yield id_type, value
    if (previous := _text(doc.get("previousId"))) is not None:
        yield "user_id", previous
        yield "anonymous_id", previous
        if rules.previous_id_type:
            yield rules.previous_id_type, previous
    traits = _obj(doc.get("traits"))
    context = _obj(doc.get("context"))
    ctx_traits = _obj(context.get("traits"))
    for source in (traits, ctx_traits):
        if (email := _text(source.get("email"))) is not None:
            yield "email", email.lower()
        if (phone := _text(source.get("phone"))) is not None:
            yield "phone#", phone_bucket(phone)
    external = context.get("externalIds")
    if isinstance(external, list):
        for entry in external:
            if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
                continue
            if (value := _text(entry.get("id"))) is not None:
                yield entry["type"], value
    for custom in rules.custom_ids:
        for path in custom.paths:
            if (value := _text(_at(doc, path))) is not None:
                yield custom.id_type, value
                break
    match = _obj(_at(context, "clew.match"))
    link_type, link = match.get("id_type"), _text(match.get("value"))
    if isinstance(link_type, str) and link is not None:
        yield link_type, link


def subject_keys(
    identifiers: Iterable[tuple[str, str]],
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The keys to look a person up by, and (second) the subset that only rows deleted with
    the person carry, whose entries may therefore be removed afterwards."""
    own: set[tuple[str, str]] = set()
    shared: set[tuple[str, str]] = set()
    for id_type, value in identifiers:
        own.add((id_type, value.lower() if id_type == "email" else value))
        if id_type == "phone":
            shared.add(("phone#", phone_bucket(value)))
        if len(value) >= MIN_LITERAL:
            own.add(("*", value.lower()))
    return own | shared, own


def literals(text: str) -> Iterator[str]:
    """The JSON string literals of ``text`` at least :data:`MIN_LITERAL` long, trimmed and
    lower-cased (escapes left as written)."""
    for m in _LITERAL.finditer(text):
        value = m.group(1).strip().lower()
        if len(value) >= MIN_LITERAL:
            yield value


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        # Text nesting deeper than the decoder goes still yields its literals.
        return None


def dead_letter_keys(
    payload: str | None, normalized: str | None, rules: IdentityRules
) -> set[tuple[str, str]]:
    """Keys of a dead letter: what its events (normalised, or as sent, or each of a batch)
    may yield, and every long string literal of its text."""
    keys: set[tuple[str, str]] = set()
    for text in (normalized, payload):
        doc = _loads(text)
        items = doc.get("batch") if isinstance(doc, dict) and "batch" in doc else doc
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                keys.update(candidates(item, rules))
        if text:
            keys.update(("*", lit) for lit in literals(text))
    return keys


def event_keys(rows: pa.Table, rules: IdentityRules) -> set[tuple[str, str, int]]:
    """``(id_type, value, day)`` of :func:`candidates` for a batch of ``events`` rows (the
    lake's columns), vectorised for the lake sink's hot path: ids are distinct column values
    per day, an email or phone is cut out of the JSON text when it occurs once as a plain
    string; only rows that need more (several or unusual occurrences, external ids, a matched
    import, a custom id field) are read as documents."""
    day = pc.fill_null(pc.cast(_column(rows, "event_date"), pa.int32()), NULL_DAY)
    keyed: set[tuple[str, str, int]] = set()
    _distinct(keyed, _column(rows, "user_id"), day, ["user_id"])
    _distinct(keyed, _column(rows, "anonymous_id"), day, ["anonymous_id"])
    previous = ["user_id", "anonymous_id"]
    if rules.previous_id_type:
        previous.append(rules.previous_id_type)
    _distinct(keyed, _column(rows, "previous_id"), day, previous)
    # What the JSON texts may yield is found by searching them for field names; most rows
    # hold none of those names anywhere. One regex pass per column finds the rows that hold
    # one, and only those are searched further (the keys of a row depend on it alone).
    markers = {path.rsplit(".", 1)[-1] for c in rules.custom_ids for path in c.paths}
    found: Any = None
    for name in _TEXT_COLUMNS:
        names = markers | _TEXT_FIELDS[name]
        if names:
            hit = pc.fill_null(pc.match_substring_regex(_column(rows, name), _any_of(names)), False)
            found = hit if found is None else pc.or_(found, hit)
    if found is not None and pc.any(found).as_py():
        _text_keys(keyed, rows.filter(found), pc.filter(day, found), rules, markers)
    return keyed


# Per JSON column, the field names whose values :func:`_text_keys` looks for (besides the
# last part of each custom id path).
_TEXT_COLUMNS = ("traits", "context", "properties")
_TEXT_FIELDS = {
    "traits": {"email", "phone"},
    "context": {"email", "phone", "externalIds", "clew"},
    "properties": set(),
}


def _any_of(names: set[str]) -> str:
    """A regex matching ``"<name>"`` for any of ``names``."""
    return "|".join(f'"{re.escape(k)}"' for k in sorted(names))


def _distinct(
    keyed: set[tuple[str, str, int]],
    values: Any,
    days: Any,
    kinds: Sequence[str],
    norm: Callable[[str], str] = str,
) -> None:
    """Add ``(kind, norm(value), day)`` for each kind and each non-blank (trimmed) value."""
    values = pc.utf8_trim_whitespace(values)
    nonempty = pc.fill_null(pc.greater(pc.utf8_length(values), 0), False)
    if not pc.any(nonempty).as_py():
        return
    kept, when = pc.filter(values, nonempty).to_pylist(), pc.filter(days, nonempty).to_pylist()
    # The set makes them distinct; its updates from zips run in C.
    normed = kept if norm is str else list(map(norm, kept))
    for kind in kinds:
        keyed.update(zip(repeat(kind, len(normed)), normed, when, strict=True))


def _text_keys(
    keyed: set[tuple[str, str, int]],
    rows: pa.Table,
    day: Any,
    rules: IdentityRules,
    markers: set[str],
) -> None:
    """The keys of ``rows`` found in their JSON texts (``day``: the day of each row)."""
    slow = pa.repeat(False, rows.num_rows)
    for name in ("traits", "context"):
        text = _column(rows, name)
        for field, kind, norm in (("email", "email", str.lower), ("phone", "phone#", phone_bucket)):
            count = pc.fill_null(pc.count_substring(text, f'"{field}"'), 0)
            has = pc.greater(count, 0)
            if not pc.any(has).as_py():
                continue
            # Cut the value out only where the field occurs: the regex is the costly part.
            sub = pc.filter(text, has)
            got = pc.struct_field(pc.extract_regex(sub, rf'"{field}"\s*:\s*"(?P<v>[^"\\]*)"'), [0])
            plain = pc.and_(pc.equal(pc.filter(count, has), 1), pc.is_valid(got))
            slow = pc.or_(slow, pc.and_(has, pc.invert(_scatter(plain, has))))
            _distinct(
                keyed, pc.filter(got, plain), pc.filter(pc.filter(day, has), plain), [kind], norm
            )
    for name in _TEXT_COLUMNS:
        keys = markers | ({"externalIds", "clew"} if name == "context" else set())
        if keys:
            hit = pc.match_substring_regex(_column(rows, name), _any_of(keys))
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


PARTITION_COLUMNS = {"events": "event_date", "dlq": "received_date"}


def _scatter(values: Any, where: Any) -> Any:
    """``values`` (one per true element of ``where``) back at those positions; true
    elsewhere."""
    flat = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in (values, where)]
    return pc.replace_with_mask(pa.repeat(True, len(where)), flat[1], flat[0])


def _column(rows: pa.Table, name: str) -> Any:
    if name in rows.column_names:
        return rows.column(name)
    return pa.nulls(rows.num_rows, pa.date32() if name == "event_date" else pa.string())


def dead_json(row: Mapping[str, Any]) -> bytes:
    return msgspec.json.encode({"payload": row.get("payload"), "normalized": row.get("normalized")})


class _Dead(msgspec.Struct):
    payload: str | None = None
    normalized: str | None = None


dead_decoder = msgspec.json.Decoder(list[_Dead])
