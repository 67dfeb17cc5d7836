"""Normal forms used when reasoning about schemas: ``$ref`` followed, ``allOf`` merged where
that keeps the meaning, ``type`` as a set. Validation never uses these; it runs the schema as
written."""

from __future__ import annotations

from typing import Any

from clew.schema._jsonschema import Schema, canonical_json, resolve_pointer
from clew.schema.errors import InvalidSchemaError

TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$defs",
        "definitions",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentSchema",
    }
)
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains")
_CONTENT_MODEL = ("additionalProperties", "unevaluatedProperties")
_MAX_REF_CHAIN = 64


def is_trivial(schema: Schema) -> bool:
    """True when ``schema`` accepts every value (``true`` or only annotations)."""
    if schema is True:
        return True
    return isinstance(schema, dict) and all(k in ANNOTATIONS for k in schema)


def types_of(schema: dict[str, Any]) -> frozenset[str] | None:
    """The ``type`` keyword as a set, ``None`` when absent (any type)."""
    t = schema.get("type")
    if t is None:
        return None
    return frozenset([t] if isinstance(t, str) else t)


def accepts_type(allowed: frozenset[str] | None, json_type: str) -> bool:
    """Whether a ``type`` set lets every value of ``json_type`` through (integers are
    numbers)."""
    if allowed is None or json_type in allowed:
        return True
    return json_type == "integer" and "number" in allowed


def deref(node: Schema, root: Schema) -> Schema:
    """``node`` with its ``$ref`` followed; sibling keywords are kept beside the target in an
    ``allOf`` (draft 2020-12 applies both)."""
    for _ in range(_MAX_REF_CHAIN):
        if not isinstance(node, dict) or "$ref" not in node:
            return node
        target = resolve_pointer(root, node["$ref"])
        rest = {k: v for k, v in node.items() if k != "$ref" and k not in ANNOTATIONS}
        if rest:
            return {"allOf": [target, rest]}
        node = target
    raise InvalidSchemaError("a chain of $ref never reaches a schema (a $ref cycle?)")


def flatten(node: Schema, root: Schema) -> Schema:
    """``node`` dereferenced, with single-branch ``anyOf``/``oneOf`` and every ``allOf``
    branch that can be merged without changing the meaning merged into it. Branches that
    cannot be merged stay in ``allOf``."""
    node = deref(node, root)
    if not isinstance(node, dict):
        return node
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if isinstance(branches, list) and len(branches) == 1:
            node = {k: v for k, v in node.items() if k != key}
            node["allOf"] = [*node.get("allOf", []), branches[0]]
        elif isinstance(branches, list) and "type" not in node:
            union = _type_union(branches, exclusive=key == "oneOf")
            if union is not None:
                node = {k: v for k, v in node.items() if k != key}
                node["type"] = union
    if "allOf" not in node:
        return node
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
    kept: list[Schema] = []
    pending = list(node["allOf"])
    while pending:
        branch = flatten(pending.pop(0), root)
        if branch is True:
            continue
        if branch is False:
            return False
        assert isinstance(branch, dict)
        inner = branch.get("allOf")
        if inner:
            pending.extend(inner)
            branch = {k: v for k, v in branch.items() if k != "allOf"}
        result = merge(merged, branch)
        if result is None:
            kept.append(branch)
        else:
            merged = result
    if kept:
        merged["allOf"] = kept
    return merged


def merge(parent: dict[str, Any], branch: dict[str, Any]) -> dict[str, Any] | None:
    """The conjunction of ``parent`` and ``branch`` as one schema, or ``None`` when that
    cannot be written without changing the meaning."""
    if not _content_model_mergeable(parent, branch):
        return None
    out = dict(parent)
    for key, value in branch.items():
        if key in ANNOTATIONS:
            out.setdefault(key, value)
            continue
        if key not in out:
            out[key] = value
            continue
        mine = out[key]
        if canonical_json(mine) == canonical_json(value):
            continue
        combined = _combine(key, mine, value, parent, branch)
        if combined is None:
            return None
        out[key] = combined
    return out


def _combine(key: str, a: Any, b: Any, pa: dict[str, Any], pb: dict[str, Any]) -> Any:
    if key == "type":
        both = _type_set(a) & _type_set(b)
        if ("integer" in _type_set(a) and "number" in _type_set(b)) or (
            "integer" in _type_set(b) and "number" in _type_set(a)
        ):
            both |= {"integer"}
        return sorted(both) if both else None
    if key == "properties":
        props = dict(a)
        for name, schema in b.items():
            props[name] = {"allOf": [props[name], schema]} if name in props else schema
        return props
    if key == "required":
        return list(dict.fromkeys([*a, *b]))
    if key in _LOWER:
        return max(a, b)
    if key in _UPPER:
        return min(a, b)
    if key == "uniqueItems":
        return bool(a or b)
    if key == "enum":
        keep = {canonical_json(v) for v in b}
        return [v for v in a if canonical_json(v) in keep] or None
    if key == "items" and "prefixItems" not in pa and "prefixItems" not in pb:
        return {"allOf": [a, b]}
    if key == "dependentRequired":
        deps = {k: list(v) for k, v in a.items()}
        for name, needs in b.items():
            deps[name] = list(dict.fromkeys([*deps.get(name, []), *needs]))
        return deps
    return None


def _content_model_mergeable(parent: dict[str, Any], branch: dict[str, Any]) -> bool:
    """``additionalProperties`` (and a branch's ``unevaluatedProperties``) only sees the
    properties declared beside it, so merging is exact only when the other side declares no
    property or pattern it does not declare too. The parent's own ``unevaluatedProperties``
    sees every branch of its ``allOf``, so merging branches under it keeps its meaning."""

    def names(s: dict[str, Any]) -> set[str]:
        return {f"p:{n}" for n in s.get("properties", {})} | {
            f"r:{n}" for n in s.get("patternProperties", {})
        }

    if "additionalProperties" in parent and not names(branch) <= names(parent):
        return False
    return not (any(k in branch for k in _CONTENT_MODEL) and not names(parent) <= names(branch))


def _type_union(branches: list[Any], *, exclusive: bool) -> list[str] | None:
    """``anyOf: [{type: string}, {type: integer}]`` is ``type: [string, integer]``; for
    ``oneOf`` only when no value can match two branches."""
    sets = []
    for b in branches:
        if not isinstance(b, dict) or set(b) - ANNOTATIONS != {"type"}:
            return None
        sets.append(_type_set(b["type"]))
    union = set().union(*sets)
    if exclusive:
        overlap = sum(len(t) for t in sets) != len(union)
        if overlap or ("integer" in union and "number" in union):
            return None
    return sorted(union)


def _type_set(t: Any) -> set[str]:
    return {t} if isinstance(t, str) else set(t)
