"""Computed-trait and audience definitions: parsed from YAML/JSON documents, checked, and
compiled into what the engine evaluates (docs/audiences.md has the language).

A document holds ``traits:`` and ``audiences:`` lists (either may be absent). Every error names
the definition and the field, so ``clew audiences push`` can say exactly what to fix.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clew.audiences._match import (
    OPERATORS,
    DefinitionError,
    EventMatch,
    PropertyFilter,
    check_keys,
    compare,
    is_missing,
    parse_duration,
    parse_event_match,
    parse_operator,
    parse_path,
    read_path,
)

__all__ = [
    "OPERATORS",
    "RESERVED",
    "TRAIT_KINDS",
    "All",
    "AnyOf",
    "AudienceCatalog",
    "AudienceDef",
    "Compare",
    "Condition",
    "Definition",
    "DefinitionError",
    "EventMatch",
    "FunnelDef",
    "InFunnel",
    "Member",
    "Not",
    "PropertyFilter",
    "TraitDef",
    "compare",
    "fingerprint",
    "is_missing",
    "parse_audience",
    "parse_document",
    "parse_duration",
    "parse_trait",
    "read_path",
]

TRAIT_KINDS = frozenset(
    {
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "most_frequent",
        "first",
        "last",
        "unique_list",
        "unique_count",
    }
)
"""Kinds of computed trait; every kind but ``count`` needs a ``property``."""

RESERVED = frozenset(
    {"audiences", "total_lifetime_value", "orders_count", "last_purchase_date", "consent"}
)
"""Computed keys Clew itself maintains; a computed trait may read but not define them."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


@dataclass(slots=True, frozen=True)
class TraitDef:
    """A computed trait. ``hidden``: compiled from an audience's event condition; it is kept
    like any other but not shown on the profile."""

    name: str
    kind: str
    match: EventMatch
    property: tuple[str, ...] | None = None
    window_ms: int | None = None
    description: str = ""
    hidden: bool = False
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    # The field ``property`` shadows the builtin in this class body.
    @builtins.property
    def fingerprint(self) -> str:
        return fingerprint(self.source)


@dataclass(slots=True, frozen=True)
class FunnelDef:
    """Did ``first`` and then not ``then_not`` within ``within_ms`` (stored under ``key``)."""

    key: str
    first: EventMatch
    then_not: EventMatch
    within_ms: int


@dataclass(slots=True, frozen=True)
class All:
    items: tuple[Condition, ...]


@dataclass(slots=True, frozen=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(slots=True, frozen=True)
class Not:
    item: Condition


@dataclass(slots=True, frozen=True)
class Compare:
    """``source``: ``trait`` (what the person's events said) or ``computed`` (computed traits,
    purchase totals, hidden traits of event conditions)."""

    source: str
    name: str
    op: str
    value: Any


@dataclass(slots=True, frozen=True)
class Member:
    audience: str


@dataclass(slots=True, frozen=True)
class InFunnel:
    key: str


Condition = All | AnyOf | Not | Compare | Member | InFunnel


@dataclass(slots=True, frozen=True)
class AudienceDef:
    name: str
    condition: Condition
    description: str = ""
    traits: tuple[TraitDef, ...] = ()
    funnels: tuple[FunnelDef, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.source)

    @property
    def references(self) -> frozenset[str]:
        return frozenset(_members(self.condition))


Definition = TraitDef | AudienceDef


def fingerprint(source: Mapping[str, Any]) -> str:
    # A description does not change what is computed, so editing it needs no backfill.
    meaning = {k: v for k, v in source.items() if k != "description"}
    canonical = json.dumps(meaning, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _members(cond: Condition) -> Iterable[str]:
    if isinstance(cond, Member):
        yield cond.audience
    elif isinstance(cond, All | AnyOf):
        for item in cond.items:
            yield from _members(item)
    elif isinstance(cond, Not):
        yield from _members(cond.item)


def _name(raw: Mapping[str, Any], what: str) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"{what} name {name!r}: use a letter then letters, digits or '_' (at most 64)"
        )
    return name


def parse_trait(
    raw: Mapping[str, Any], *, hidden: bool = False, where: str | None = None
) -> TraitDef:
    """``where``: how error messages name the trait (an audience's event condition names
    itself, not its hidden trait)."""
    name = raw.get("name", "?") if hidden else _name(raw, "trait")
    where = where or f"trait {name!r}"
    # ``event_type``, not ``type``: a stored definition's ``type`` says trait or audience.
    allowed = {"name", "kind", "event", "event_type", "where", "property", "window", "description"}
    check_keys(raw, allowed, where)
    kind = raw.get("kind")
    if kind not in TRAIT_KINDS:
        raise DefinitionError(f"{where}: kind {kind!r} is not one of {sorted(TRAIT_KINDS)}")
    if not hidden and name in RESERVED:
        raise DefinitionError(f"{where}: {name!r} is maintained by Clew; choose another name")
    prop = raw.get("property")
    if kind != "count" and prop is None:
        raise DefinitionError(f"{where}: kind {kind!r} needs a 'property' to read")
    match_raw: dict[str, Any] = {"event": raw.get("event", "*")}
    if raw.get("event_type") is not None:
        match_raw["type"] = raw["event_type"]
    if raw.get("where") is not None:
        match_raw["where"] = raw["where"]
    window = raw.get("window")
    return TraitDef(
        name=str(name),
        kind=str(kind),
        match=parse_event_match(match_raw, where),
        property=parse_path(prop, f"{where}.property") if prop is not None else None,
        window_ms=parse_duration(window, f"{where}.window") if window is not None else None,
        description=str(raw.get("description", "")),
        hidden=hidden,
        source=dict(raw),
    )


class _Compiler:
    """Turns one audience's condition tree into conditions plus the hidden traits and funnels
    its event conditions need."""

    _COUNTS = {"at_least": "gte", "at_most": "lte", "exactly": "eq"}

    def __init__(self, audience: str) -> None:
        self.audience = audience
        self.traits: list[TraitDef] = []
        self.funnels: list[FunnelDef] = []

    def condition(self, raw: Any, where: str) -> Condition:
        if not isinstance(raw, Mapping) or len(raw) == 0:
            raise DefinitionError(f"{where}: expected a condition mapping")
        if "all" in raw or "any" in raw:
            key = "all" if "all" in raw else "any"
            check_keys(raw, {key}, where)
            items = raw[key]
            if not isinstance(items, list) or not items:
                raise DefinitionError(f"{where}.{key}: expected a non-empty list of conditions")
            parsed = tuple(self.condition(c, f"{where}.{key}[{i}]") for i, c in enumerate(items))
            return All(parsed) if key == "all" else AnyOf(parsed)
        if "not" in raw:
            check_keys(raw, {"not"}, where)
            return Not(self.condition(raw["not"], f"{where}.not"))
        if "audience" in raw:
            check_keys(raw, {"audience"}, where)
            if not isinstance(raw["audience"], str):
                raise DefinitionError(f"{where}.audience: expected an audience name")
            return Member(raw["audience"])
        if "trait" in raw or "computed" in raw:
            source = "trait" if "trait" in raw else "computed"
            check_keys(raw, {source, "op", "value"}, where)
            if not isinstance(raw[source], str) or not raw[source]:
                raise DefinitionError(f"{where}.{source}: expected a trait name")
            op = parse_operator(raw, "exists" if "value" not in raw else "eq", where)
            return Compare(source, str(raw[source]), op, raw.get("value"))
        if "consent" in raw:
            check_keys(raw, {"consent", "granted"}, where)
            category = raw["consent"]
            if not isinstance(category, str) or not category:
                raise DefinitionError(f"{where}.consent: expected a consent category name")
            granted = raw.get("granted", True)
            if not isinstance(granted, bool):
                raise DefinitionError(f"{where}.granted: expected true or false")
            return Compare("computed", f"consent.categoryPreferences.{category}", "eq", granted)
        if "event" in raw or "did_not" in raw:
            return self._event(raw, where)
        if "funnel" in raw:
            return self._funnel(raw, where)
        raise DefinitionError(
            f"{where}: unknown condition {sorted(raw)}; use all, any, not, trait, computed, "
            "event, did_not, funnel, consent or audience"
        )

    def _event(self, raw: Mapping[str, Any], where: str) -> Condition:
        negated = "did_not" in raw
        key = "did_not" if negated else "event"
        allowed = {key, "event_type", "where", "within"}
        if not negated:
            allowed |= {*self._COUNTS, "sum", "avg", "min", "max", "op", "value"}
        check_keys(raw, allowed, where)
        trait: dict[str, Any] = {"name": f"{self.audience}#{len(self.traits)}", "event": raw[key]}
        for extra in ("event_type", "where"):
            if raw.get(extra) is not None:
                trait[extra] = raw[extra]
        if raw.get("within") is not None:
            parse_duration(raw["within"], f"{where}.within")
            trait["window"] = raw["within"]
        aggregates = [k for k in ("sum", "avg", "min", "max") if k in raw]
        counts = [k for k in self._COUNTS if k in raw]
        if len(aggregates) + len(counts) > 1:
            raise DefinitionError(
                f"{where}: give one of at_least, at_most, exactly, sum, avg, min, max"
            )
        if aggregates:
            parse_path(raw[aggregates[0]], f"{where}.{aggregates[0]}")
            trait.update(kind=aggregates[0], property=raw[aggregates[0]])
            op, value = parse_operator(raw, "gte", where), raw.get("value")
        elif "op" in raw or "value" in raw:
            raise DefinitionError(
                f"{where}: 'op' and 'value' go with sum, avg, min or max; count events with "
                "at_least, at_most or exactly"
            )
        else:
            trait["kind"] = "count"
            if negated:
                op, value = "eq", 0
            else:
                count_key = counts[0] if counts else "at_least"
                op, value = self._COUNTS[count_key], raw.get(count_key, 1)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise DefinitionError(f"{where}.{count_key}: expected a whole number >= 0")
        parsed = parse_trait(trait, hidden=True, where=where)
        self.traits.append(parsed)
        return Compare("computed", parsed.name, op, value)

    def _funnel(self, raw: Mapping[str, Any], where: str) -> Condition:
        check_keys(raw, {"funnel"}, where)
        body = raw["funnel"]
        at = f"{where}.funnel"
        if not isinstance(body, Mapping):
            raise DefinitionError(f"{at}: expected {{did, then_not, within}}")
        check_keys(body, {"did", "then_not", "within"}, at)
        for key in ("did", "then_not", "within"):
            if body.get(key) is None:
                raise DefinitionError(f"{at}: '{key}' is required")
        funnel = FunnelDef(
            key=f"{self.audience}~{len(self.funnels)}",
            first=parse_event_match(body["did"], f"{at}.did"),
            then_not=parse_event_match(body["then_not"], f"{at}.then_not"),
            within_ms=parse_duration(body["within"], f"{at}.within"),
        )
        self.funnels.append(funnel)
        return InFunnel(funnel.key)


def parse_audience(raw: Mapping[str, Any]) -> AudienceDef:
    name = _name(raw, "audience")
    where = f"audience {name!r}"
    check_keys(raw, {"name", "description", "condition"}, where)
    if raw.get("condition") is None:
        raise DefinitionError(f"{where}: 'condition' is required")
    compiler = _Compiler(name)
    condition = compiler.condition(raw["condition"], f"{where}.condition")
    return AudienceDef(
        name=name,
        condition=condition,
        description=str(raw.get("description", "")),
        traits=tuple(compiler.traits),
        funnels=tuple(compiler.funnels),
        source=dict(raw),
    )


def parse_document(doc: Any) -> list[Definition]:
    """The definitions in a YAML/JSON document: ``{traits: [...], audiences: [...]}``, or one
    definition with ``type: trait`` or ``type: audience``."""
    if not isinstance(doc, Mapping):
        raise DefinitionError("a definitions document must be a mapping with traits/audiences")
    if "type" in doc:
        body = {k: v for k, v in doc.items() if k != "type"}
        if doc["type"] == "trait":
            return [parse_trait(body)]
        if doc["type"] == "audience":
            return [parse_audience(body)]
        raise DefinitionError(f"type {doc['type']!r}: use 'trait' or 'audience'")
    check_keys(doc, {"traits", "audiences"}, "document")
    out: list[Definition] = []
    for key, parse in (("traits", parse_trait), ("audiences", parse_audience)):
        items = doc.get(key) or []
        if not isinstance(items, list):
            raise DefinitionError(f"document.{key}: expected a list")
        for item in items:
            if not isinstance(item, Mapping):
                raise DefinitionError(f"document.{key}: every entry must be a mapping")
            out.append(parse(item))
    return out


@dataclass(slots=True, frozen=True)
class AudienceCatalog:
    """A checked set of definitions: names unique, every referenced audience defined, every
    ``computed:`` name a defined trait or a :data:`RESERVED` value, no membership cycles.
    ``audiences`` is in evaluation order (an audience after those it refers to)."""

    traits: tuple[TraitDef, ...] = ()
    audiences: tuple[AudienceDef, ...] = ()

    @classmethod
    def of(cls, definitions: Iterable[Definition]) -> AudienceCatalog:
        traits: dict[str, TraitDef] = {}
        audiences: dict[str, AudienceDef] = {}
        for d in definitions:
            if d.name in traits or d.name in audiences:
                raise DefinitionError(f"{d.name!r} is defined twice; names must be unique")
            if isinstance(d, TraitDef):
                traits[d.name] = d
            else:
                audiences[d.name] = d
        _check_computed(traits, audiences)
        return cls(tuple(traits.values()), tuple(_ordered(audiences)))

    def all_traits(self) -> tuple[TraitDef, ...]:
        """Named traits, then the hidden ones of every audience."""
        return self.traits + tuple(t for a in self.audiences for t in a.traits)

    def all_funnels(self) -> tuple[FunnelDef, ...]:
        return tuple(f for a in self.audiences for f in a.funnels)

    def definitions(self) -> list[Definition]:
        return [*self.traits, *self.audiences]


def _closest(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the most similar of ``names``, or nothing."""
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _computed_names(cond: Condition) -> Iterable[str]:
    if isinstance(cond, Compare) and cond.source == "computed":
        yield cond.name
    elif isinstance(cond, All | AnyOf):
        for item in cond.items:
            yield from _computed_names(item)
    elif isinstance(cond, Not):
        yield from _computed_names(cond.item)


def _check_computed(traits: Mapping[str, TraitDef], audiences: Mapping[str, AudienceDef]) -> None:
    """Raise if an audience reads a computed value nothing maintains: it would be stored and
    never hold for anyone. A dotted name (``consent.categoryPreferences.x``) is checked by its
    first part, the key in the profile's computed values."""
    for a in audiences.values():
        own = {t.name for t in a.traits}
        for name in _computed_names(a.condition):
            if name in own or name.split(".", 1)[0] in traits or name.split(".", 1)[0] in RESERVED:
                continue
            hint = _closest(name, [*traits, *RESERVED])
            raise DefinitionError(
                f"audience {a.name!r} reads computed trait {name!r}, which is not defined{hint}; "
                "push the trait first (or in the same document), or read an event's trait "
                "with 'trait:'"
            )


def _ordered(audiences: Mapping[str, AudienceDef]) -> list[AudienceDef]:
    """Audiences in dependency order; raises on an unknown reference or a cycle."""
    for a in audiences.values():
        for ref in sorted(a.references):
            if ref not in audiences:
                raise DefinitionError(
                    f"audience {a.name!r} refers to audience {ref!r}, which is not defined"
                    f"{_closest(ref, audiences)}; push it first (or in the same document)"
                )
    order: list[AudienceDef] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise DefinitionError(f"audiences refer to each other in a cycle: {cycle}")
        state[name] = 1
        for ref in sorted(audiences[name].references):
            visit(ref, [*trail, name])
        state[name] = 2
        order.append(audiences[name])

    for name in audiences:
        visit(name, [])
    return order
