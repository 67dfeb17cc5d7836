"""The object rules of the structural compatibility engine (:mod:`clew.schema._subsume`):
declared and undeclared properties under open, closed and partially open content models,
required and dependent-required properties."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

from clew.schema._jsonschema import Schema
from clew.schema._normalize import is_trivial
from clew.schema.changes import Change, ChangeKind

Path = tuple[str | int, ...]
K = ChangeKind


class ObjectRules(ABC):
    """The object schema rules of :class:`clew.schema._subsume.Subsumption`, which provides
    the dispatch and the helpers declared here."""

    backward: bool

    @abstractmethod
    def sub(self, w_raw: Schema, r_raw: Schema, path: Path, always: bool) -> list[Change]: ...

    @abstractmethod
    def _change(
        self, path: Path, backward: K, forward: K, message: str, *, rejects_all: bool = False
    ) -> Change: ...

    @abstractmethod
    def _fails(self, what: str) -> str: ...

    @abstractmethod
    def _bound(
        self,
        w: dict[str, Any],
        r: dict[str, Any],
        path: Path,
        key: str,
        *,
        safe: bool | None = None,
    ) -> list[Change]: ...

    def _objects(
        self, w: dict[str, Any], r: dict[str, Any], path: Path, always: bool
    ) -> list[Change]:
        out: list[Change] = []
        w_props: dict[str, Schema] = w.get("properties", {})
        r_props: dict[str, Schema] = r.get("properties", {})
        w_req, r_req = w.get("required", []), r.get("required", [])
        for name in dict.fromkeys([*r_props, *w_props]):
            at = (*path, "properties", name)
            if name in w_props and name in r_props:
                out += self.sub(w_props[name], r_props[name], at, always and name in w_req)
            elif name in r_props:
                out += self._declared_by_reader(w, name, r_props[name], at)
            else:
                out += self._declared_by_writer(
                    r, name, w_props[name], at, always and name in w_req
                )
        out += self._undeclared(w, r, path)
        for name in r_req:
            if name not in w_req:
                out.append(self._required(name, name in w_props, path, always))
        out += self._dependent_required(w, r, path)
        out += self._bound(w, r, path, "minProperties") + self._bound(w, r, path, "maxProperties")
        return out

    def _declared_by_reader(
        self, w: dict[str, Any], name: str, r_schema: Schema, at: Path
    ) -> list[Change]:
        extra = _extra(w, name)
        if extra is False:
            return []  # a closed writer never carries it
        found = self.sub(extra, r_schema, at, False)
        if not found:
            return []
        detail = found[0].message.split(":")[0]
        if is_trivial(extra):
            kinds = (
                K.PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
                K.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL,
            )
            model = "an open content model"
        else:
            kinds = (
                K.PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                K.PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
            )
            model = "a partially open content model whose schema for other properties is wider"
        if self.backward:
            msg = (
                f"property '{name}' was added to {model}: events written under the old schema "
                f"may already carry '{name}' with another value, which the new schema rejects "
                f"({detail}). Close the old model first (additionalProperties: false), or "
                f"declare '{name}' with a schema that accepts anything ({{}})"
            )
        else:
            msg = (
                f"property '{name}' was removed from {model}: new events may carry '{name}' "
                f"with any value, which readers still on the old schema reject ({detail})"
            )
        return [self._change(at, *kinds, msg)]

    def _declared_by_writer(
        self, r: dict[str, Any], name: str, w_schema: Schema, at: Path, always: bool
    ) -> list[Change]:
        extra = _extra(r, name)
        if is_trivial(extra) or w_schema is False:
            return []
        found = self.sub(w_schema, extra, at, always)
        if not found:
            return []
        if extra is False:
            kinds = (
                K.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                K.PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL,
            )
            if self.backward:
                msg = (
                    f"property '{name}' was removed from a closed content model: events written "
                    f"under the old schema that carry '{name}' fail the new one"
                )
            else:
                msg = (
                    f"property '{name}' was added to a closed content model: new events that "
                    f"carry '{name}' fail readers still on the old schema, which allows no "
                    "other properties"
                )
        else:
            kinds = (
                K.PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                K.PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
            )
            detail = found[0].message.split(":")[0]
            verb, side = ("removed from", "old") if self.backward else ("added to", "new")
            msg = (
                f"property '{name}' was {verb} a partially open content model whose schema for "
                f"other properties does not accept every {side} value of it ({detail})"
            )
        return [self._change(at, *kinds, msg, rejects_all=always)]

    def _undeclared(self, w: dict[str, Any], r: dict[str, Any], path: Path) -> list[Change]:
        out: list[Change] = []
        w_extra, r_extra = _additional(w), _additional(r)
        w_pat: dict[str, Schema] = w.get("patternProperties", {})
        r_pat: dict[str, Schema] = r.get("patternProperties", {})
        pairs: list[tuple[Schema, Schema, Path, str]] = [
            (w_pat.get(p, w_extra), s, (*path, "patternProperties", p), f"matching /{p}/")
            for p, s in r_pat.items()
        ]
        pairs += [
            (s, r_extra, (*path, "additionalProperties"), f"matching /{p}/")
            for p, s in w_pat.items()
            if p not in r_pat
        ]
        pairs.append((w_extra, r_extra, (*path, "additionalProperties"), "not declared"))
        for ws, rs, at, which in pairs:
            if not self.sub(ws, rs, at, False):
                continue
            if is_trivial(ws) and rs is False:
                kinds = (K.CONTENT_MODEL_CLOSED, K.CONTENT_MODEL_OPENED)
                change = (
                    "the content model was closed (no other properties allowed)"
                    if self.backward
                    else "the content model was opened (other properties allowed)"
                )
            else:
                kinds = (K.ADDITIONAL_PROPERTIES_NARROWED, K.ADDITIONAL_PROPERTIES_WIDENED)
                change = (
                    f"the schema for properties {which} was narrowed"
                    if self.backward
                    else f"the schema for properties {which} was widened"
                )
            msg = f"{change}: {self._fails(f'with properties {which} by the schema')}"
            out.append(self._change(at, *kinds, msg))
        return out

    def _required(self, name: str, declared: bool, path: Path, always: bool) -> Change:
        at = (*path, "required", name)
        missing = self._fails(f"without '{name}'")
        if self.backward:
            if declared:
                return self._change(
                    at,
                    K.PROPERTY_MADE_REQUIRED,
                    K.PROPERTY_MADE_OPTIONAL,
                    f"'{name}' became required: {missing}",
                )
            return self._change(
                at,
                K.REQUIRED_PROPERTY_ADDED,
                K.REQUIRED_PROPERTY_REMOVED,
                f"new required property '{name}': {missing}",
                rejects_all=always,
            )
        if declared:
            msg = f"'{name}' is no longer required: {missing}"
            return self._change(at, K.PROPERTY_MADE_REQUIRED, K.PROPERTY_MADE_OPTIONAL, msg)
        msg = f"required property '{name}' was removed: {missing}"
        return self._change(at, K.REQUIRED_PROPERTY_ADDED, K.REQUIRED_PROPERTY_REMOVED, msg)

    def _dependent_required(self, w: dict[str, Any], r: dict[str, Any], path: Path) -> list[Change]:
        out = []
        w_deps: dict[str, list[str]] = w.get("dependentRequired", {})
        w_req = set(w.get("required", []))
        for name, needs in r.get("dependentRequired", {}).items():
            missing = [n for n in needs if n not in w_deps.get(name, []) and n not in w_req]
            if not missing:
                continue
            listed = ", ".join(f"'{n}'" for n in missing)
            verb = "now requires" if self.backward else "no longer requires"
            fails = self._fails(f"with '{name}' but not {listed}")
            msg = f"'{name}' {verb} {listed}: {fails}"
            out.append(
                self._change(
                    (*path, "dependentRequired", name),
                    K.DEPENDENT_REQUIRED_ADDED,
                    K.DEPENDENT_REQUIRED_REMOVED,
                    msg,
                )
            )
        return out


def _additional(schema: dict[str, Any]) -> Schema:
    """The schema a flat object schema applies to a property it does not declare."""
    value = schema.get("additionalProperties", schema.get("unevaluatedProperties", True))
    return value if isinstance(value, dict | bool) else True


def _extra(schema: dict[str, Any], name: str) -> Schema:
    """The schema ``schema`` applies to a property ``name`` it does not declare."""
    matching = [s for p, s in schema.get("patternProperties", {}).items() if re.search(p, name)]
    if not matching:
        return _additional(schema)
    return matching[0] if len(matching) == 1 else {"allOf": matching}
