"""The structural compatibility engine: can every value valid under a *writer* schema fail the
*reader* schema, and where? Backward checks read old data with the new schema (writer = old,
reader = new); forward checks swap them. Kinds and messages are named from old to new.

The rules follow Confluent Schema Registry's JSON Schema rules (open, closed and partially
open content models), applied recursively: a property a reader declares and a writer does not
is safe only if the writer's schema for undeclared properties fits inside it. Where the engine
cannot prove a change safe (regular expressions, composition, rare keywords) it reports it as
breaking with a *conservative* kind. The object rules (properties, content models, required)
are in :mod:`clew.schema._subsume_objects`.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

import jsonschema_rs

from clew.schema._jsonschema import Schema, canonical_json, compile_validator
from clew.schema._normalize import (
    TYPES,
    accepts_type,
    flatten,
    is_trivial,
    merge,
    types_of,
)
from clew.schema._subsume_objects import K, ObjectRules, Path
from clew.schema.changes import Change, Direction

_MAX_DEPTH = 200
_SAFE_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$\-]*$")
_RARE_KEYWORDS = (
    "not",
    "if",
    "propertyNames",
    "dependentSchemas",
    "contains",
    "unevaluatedItems",
)
_STEMS = {
    "minLength": "MIN_LENGTH",
    "maxLength": "MAX_LENGTH",
    "minItems": "MIN_ITEMS",
    "maxItems": "MAX_ITEMS",
    "minProperties": "MIN_PROPERTIES",
    "maxProperties": "MAX_PROPERTIES",
    "minimum": "MINIMUM",
    "exclusiveMinimum": "EXCLUSIVE_MINIMUM",
    "maximum": "MAXIMUM",
    "exclusiveMaximum": "EXCLUSIVE_MAXIMUM",
}


def render_path(path: Path) -> str:
    """Dotted schema path; names that are not plain identifiers are quoted.

    >>> render_path(("properties", "products", "items", "properties", "unit price"))
    'properties.products.items.properties["unit price"]'
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SAFE_NAME.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _show_types(types: frozenset[str] | None) -> str:
    if types is None:
        return "any type"
    return " or ".join(sorted(types))


def _article(words: str) -> str:
    return f"an {words}" if words[:1] in "aeiou" else f"a {words}"


def _values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    enum = schema.get("enum")
    return list(enum) if isinstance(enum, list) else None


def _without(schema: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != key}


class Subsumption(ObjectRules):
    """One check of ``writer`` against ``reader``; :meth:`run` returns the changes."""

    def __init__(self, writer: Schema, reader: Schema, direction: Direction) -> None:
        if direction is Direction.FULL:
            raise ValueError("a subsumption check runs one direction at a time")
        self.wroot = writer
        self.rroot = reader
        self.direction = direction
        self.backward = direction is Direction.BACKWARD
        self._active: set[tuple[int, int]] = set()
        self._keep: list[tuple[Schema, Schema]] = []
        self._validators: dict[str, jsonschema_rs.Validator | None] = {}

    def run(self) -> list[Change]:
        return list(dict.fromkeys(self.sub(self.wroot, self.rroot, (), True)))

    # -- helpers -------------------------------------------------------------------------

    def _change(
        self, path: Path, backward: K, forward: K, message: str, *, rejects_all: bool = False
    ) -> Change:
        return Change(
            render_path(path),
            backward if self.backward else forward,
            message,
            self.direction,
            rejects_all=rejects_all and self.backward,
        )

    def _fails(self, what: str) -> str:
        if self.backward:
            return f"events written under the old schema {what} fail the new one"
        return f"new events {what} fail readers still on the old schema"

    def _old_new(self, writer: Any, reader: Any) -> tuple[Any, Any]:
        return (writer, reader) if self.backward else (reader, writer)

    def _accepts(self, reader: Schema, value: Any) -> bool:
        key = canonical_json(reader)
        if key not in self._validators:
            doc: dict[str, Any] = dict(reader) if isinstance(reader, dict) else {"allOf": [reader]}
            if isinstance(self.rroot, dict):
                for defs in ("$defs", "definitions"):
                    if defs in self.rroot and defs not in doc:
                        doc[defs] = self.rroot[defs]
            try:
                self._validators[key] = compile_validator(doc)
            except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError):
                self._validators[key] = None
        validator = self._validators[key]
        return validator is not None and validator.is_valid(value)

    # -- dispatch ------------------------------------------------------------------------

    def sub(self, w_raw: Schema, r_raw: Schema, path: Path, always: bool) -> list[Change]:
        """Changes by which a value valid under ``w_raw`` may fail ``r_raw`` at ``path``.
        ``always`` is true when every writer document has a value at ``path``."""
        key = (id(w_raw), id(r_raw))
        if key in self._active:
            return []  # recursive schemas: instances are finite, so assume the cycle holds
        if len(self._active) > _MAX_DEPTH:
            msg = "schemas nest too deeply to compare"
            return [self._change(path, K.KEYWORD_CHANGED, K.KEYWORD_CHANGED, msg)]
        self._active.add(key)
        self._keep.append((w_raw, r_raw))
        try:
            w = flatten(w_raw, self.wroot)
            r = flatten(r_raw, self.rroot)
            return self._compare(w, r, path, always)
        finally:
            self._active.discard(key)

    def _compare(self, w: Schema, r: Schema, path: Path, always: bool) -> list[Change]:
        if is_trivial(r) or w is False:
            return []
        if r is False:
            if self.backward:
                msg = "the new schema forbids any value here (false)"
            else:
                msg = "the old schema forbade any value here (false) and the new one allows it"
            msg = f"{msg}: {self._fails('with a value here')}"
            return [self._change(path, K.VALUE_FORBIDDEN, K.VALUE_ALLOWED, msg, rejects_all=always)]
        w = {} if w is True else w
        assert isinstance(w, dict) and isinstance(r, dict)
        if "anyOf" in w or "oneOf" in w:
            return self._writer_union(w, r, path)
        if "allOf" in w:
            return self._writer_intersection(w, r, path, always)
        if "allOf" in r:
            out = self._compare(w, _without(r, "allOf"), path, always)
            for branch in r["allOf"]:
                out += self.sub(w, branch, path, always)
            return out
        if "anyOf" in r or "oneOf" in r:
            return self._reader_union(w, r, path, always)
        values = _values(w)
        if values is not None:
            return self._enum(values, r, path, always)
        return self._constraints(w, r, path, always)

    def _writer_union(self, w: dict[str, Any], r: dict[str, Any], path: Path) -> list[Change]:
        key = "anyOf" if "anyOf" in w else "oneOf"
        rest = _without(w, key)
        out: list[Change] = []
        for raw in w[key]:
            branch = flatten(raw, self.wroot)
            if branch is False:
                continue
            both = merge(rest, branch) if isinstance(branch, dict) else rest
            # A branch alone admits at least what the branch and its siblings admit together.
            out += self.sub(both if both is not None else branch, r, path, False)
        return out

    def _writer_intersection(
        self, w: dict[str, Any], r: dict[str, Any], path: Path, always: bool
    ) -> list[Change]:
        rest = _without(w, "allOf")
        first = self._compare(rest, r, path, always)
        if not first:
            return []
        for branch in w["allOf"]:
            if not self.sub(branch, r, path, always):
                return []
        return first

    def _reader_union(
        self, w: dict[str, Any], r: dict[str, Any], path: Path, always: bool
    ) -> list[Change]:
        key = "anyOf" if "anyOf" in r else "oneOf"
        rest = _without(r, key)
        out = [] if is_trivial(rest) else self._compare(w, rest, path, always)
        best: list[Change] | None = None
        for branch in r[key]:
            found = self.sub(w, branch, path, always)
            if not found:
                return out
            if best is None or len(found) < len(best):
                best = found
        closest = "; ".join(c.message for c in (best or [])[:2])
        if self.backward:
            msg = f"no alternative of the new {key} accepts every value the old schema accepted"
        else:
            msg = f"no alternative of the old {key} accepts every value the new schema accepts"
        msg = f"{msg} (closest alternative: {closest})"
        return [*out, self._change(path, K.COMPOSITION_NARROWED, K.COMPOSITION_WIDENED, msg)]

    # -- values and types ----------------------------------------------------------------

    def _enum(self, values: list[Any], r: dict[str, Any], path: Path, always: bool) -> list[Change]:
        rejected = [v for v in values if not self._accepts(r, v)]
        if not rejected:
            return []
        shown = ", ".join(_show(v) for v in rejected[:10])
        if self.backward:
            msg = f"value(s) {shown} allowed by the old schema are rejected by the new one"
        else:
            msg = f"value(s) {shown} allowed by the new schema are rejected by the old one"
        msg = f"{msg}: {self._fails('with these values')}"
        all_gone = len(rejected) == len(values)
        return [
            self._change(
                path, K.ENUM_VALUE_REMOVED, K.ENUM_VALUE_ADDED, msg, rejects_all=always and all_gone
            )
        ]

    def _constraints(
        self, w: dict[str, Any], r: dict[str, Any], path: Path, always: bool
    ) -> list[Change]:
        out: list[Change] = []
        w_types = types_of(w)
        r_types = types_of(r)
        writer_types = w_types if w_types is not None else TYPES
        live = frozenset(t for t in writer_types if accepts_type(r_types, t))
        if "number" in writer_types and r_types is not None and "integer" in r_types:
            live |= {"integer"}  # the integers among the writer's numbers still fit
        lost = sorted(t for t in writer_types if not accepts_type(r_types, t))
        if "number" in lost and "integer" in lost:
            lost.remove("integer")
        if lost:
            old, new = self._old_new(w_types, r_types)
            if not live:
                kind, verb = (K.TYPE_CHANGED, K.TYPE_CHANGED), "changed"
            elif self.backward:
                kind, verb = (K.TYPE_NARROWED, K.TYPE_WIDENED), "narrowed"
            else:
                kind, verb = (K.TYPE_NARROWED, K.TYPE_WIDENED), "widened"
            shown = [
                "non-integer number" if t == "number" and "integer" in live else t for t in lost
            ]
            what = (
                f"with a value that is not {_show_types(r_types)}"
                if w_types is None
                else f"with {_article(' or '.join(shown))} value here"
            )
            msg = f"type {verb} from {_show_types(old)} to {_show_types(new)}: {self._fails(what)}"
            out.append(self._change(path, *kind, msg, rejects_all=always and not live))
        if not live:
            return out
        r_values = _values(r)
        if r_values is not None:
            allowed = ", ".join(_show(v) for v in r_values[:10])
            if self.backward:
                msg = f"values restricted to {allowed}: {self._fails('with any other value')}"
            else:
                msg = f"the restriction to {allowed} was lifted: {self._fails('with other values')}"
            return [*out, self._change(path, K.ENUM_ADDED, K.ENUM_REMOVED, msg)]
        out += self._rare_keywords(w, r, path)
        if "number" in live or "integer" in live:
            out += self._numbers(w, r, path, only_integers="number" not in live)
        if "string" in live:
            out += self._strings(w, r, path)
        if "array" in live:
            out += self._arrays(w, r, path)
        if "object" in live:
            out += self._objects(w, r, path, always)
        return out

    def _rare_keywords(self, w: dict[str, Any], r: dict[str, Any], path: Path) -> list[Change]:
        out = []
        for keyword in _RARE_KEYWORDS:
            group = ("if", "then", "else") if keyword == "if" else (keyword,)
            if keyword == "contains":
                group = ("contains", "minContains", "maxContains")
            mine = [w.get(k) for k in group]
            theirs = [r.get(k) for k in group]
            if keyword in r and canonical_json(mine) != canonical_json(theirs):
                msg = (
                    f"'{keyword}' changed and Clew cannot prove the change safe, so it is "
                    "treated as breaking"
                )
                out.append(
                    self._change((*path, keyword), K.KEYWORD_CHANGED, K.KEYWORD_CHANGED, msg)
                )
        return out

    # -- bounds --------------------------------------------------------------------------

    def _bound(
        self,
        w: dict[str, Any],
        r: dict[str, Any],
        path: Path,
        key: str,
        *,
        safe: bool | None = None,
    ) -> list[Change]:
        """A reader bound ``key`` the writer does not already satisfy."""
        lower = key.startswith(("min", "exclusiveMin"))
        rv, wv = r.get(key), w.get(key)
        if rv is None:
            return []
        if safe is None:
            safe = wv is not None and (wv >= rv if lower else wv <= rv)
        if safe:
            return []
        stem = _STEMS[key]
        tighter = "raised" if lower else "lowered"
        looser = "lowered" if lower else "raised"
        if self.backward:
            kind = (
                f"{stem}_ADDED" if wv is None else f"{stem}_{'INCREASED' if lower else 'DECREASED'}"
            )
            change = f"{key} {rv} added" if wv is None else f"{key} {tighter} from {wv} to {rv}"
        else:
            kind = (
                f"{stem}_REMOVED"
                if wv is None
                else f"{stem}_{'DECREASED' if lower else 'INCREASED'}"
            )
            change = f"{key} {rv} removed" if wv is None else f"{key} {looser} from {rv} to {wv}"
        outside = "outside the new range" if self.backward else "outside the old range"
        msg = f"{change}: {self._fails(outside)}"
        return [Change(render_path((*path, key)), K(kind), msg, self.direction)]

    def _numbers(
        self, w: dict[str, Any], r: dict[str, Any], path: Path, *, only_integers: bool
    ) -> list[Change]:
        out: list[Change] = []
        for keys, lower in (
            (("minimum", "exclusiveMinimum"), True),
            (("maximum", "exclusiveMaximum"), False),
        ):
            bounds = [(w[k], k.startswith("exclusive")) for k in keys if k in w]
            # The writer's tightest bound: the highest lower or lowest upper, exclusive on ties.
            best = None
            if bounds:
                best = (max if lower else min)(
                    bounds, key=lambda b: (b[0] if lower else -b[0], b[1])
                )
            for key in keys:
                if key not in r:
                    continue
                exclusive = key.startswith("exclusive")
                rv = r[key]
                safe = best is not None and (
                    (best[0] > rv if lower else best[0] < rv)
                    or (best[0] == rv and (best[1] or not exclusive))
                )
                out += self._bound(w, r, path, key, safe=safe)
        rm = r.get("multipleOf")
        if rm is not None:
            wm = w.get("multipleOf")
            unit = Fraction(str(rm))
            safe = (wm is not None and Fraction(str(wm)) % unit == 0) or (
                only_integers and Fraction(1) % unit == 0
            )
            if not safe:
                if self.backward:
                    kind = K.MULTIPLE_OF_ADDED if wm is None else K.MULTIPLE_OF_CHANGED
                    change = (
                        f"multipleOf {rm} added"
                        if wm is None
                        else f"multipleOf changed from {wm} to {rm}"
                    )
                else:
                    kind = K.MULTIPLE_OF_REMOVED if wm is None else K.MULTIPLE_OF_CHANGED
                    change = (
                        f"multipleOf {rm} removed"
                        if wm is None
                        else f"multipleOf changed from {rm} to {wm}"
                    )
                msg = f"{change}: {self._fails('with other multiples')}"
                out.append(Change(render_path((*path, "multipleOf")), kind, msg, self.direction))
        return out

    def _strings(self, w: dict[str, Any], r: dict[str, Any], path: Path) -> list[Change]:
        out = self._bound(w, r, path, "minLength") + self._bound(w, r, path, "maxLength")
        for key, kinds in (
            ("pattern", (K.PATTERN_ADDED, K.PATTERN_REMOVED, K.PATTERN_CHANGED)),
            ("format", (K.FORMAT_ADDED, K.FORMAT_REMOVED, K.FORMAT_CHANGED)),
        ):
            rv, wv = r.get(key), w.get(key)
            if rv is None or rv == wv:
                continue
            added, removed, changed = kinds
            old, new = self._old_new(wv, rv)
            if wv is None:
                kind = added if self.backward else removed
                change = f"{key} {_show(rv)} {'added' if self.backward else 'removed'}"
            else:
                kind = changed
                change = f"{key} changed from {_show(old)} to {_show(new)}"
            msg = f"{change}: {self._fails('with strings that do not match it')}"
            out.append(Change(render_path((*path, key)), kind, msg, self.direction))
        return out

    def _arrays(self, w: dict[str, Any], r: dict[str, Any], path: Path) -> list[Change]:
        out = self._bound(w, r, path, "minItems") + self._bound(w, r, path, "maxItems")
        if r.get("uniqueItems") and not w.get("uniqueItems"):
            change = "uniqueItems added" if self.backward else "uniqueItems removed"
            msg = f"{change}: {self._fails('with repeated items')}"
            out.append(
                self._change(
                    (*path, "uniqueItems"), K.UNIQUE_ITEMS_ADDED, K.UNIQUE_ITEMS_REMOVED, msg
                )
            )
        w_prefix, r_prefix = w.get("prefixItems", []), r.get("prefixItems", [])
        w_items, r_items = w.get("items", True), r.get("items", True)
        for i in range(max(len(w_prefix), len(r_prefix))):
            ws = w_prefix[i] if i < len(w_prefix) else w_items
            rs = r_prefix[i] if i < len(r_prefix) else r_items
            out += self.sub(ws, rs, (*path, "prefixItems", i), False)
        out += self.sub(w_items, r_items, (*path, "items"), False)
        return out
