"""JSON Schema plumbing: canonical form, fingerprints, local references, publish-time checks
and compiled validators (jsonschema-rs)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any, TypeAlias
from urllib.parse import unquote

import jsonschema_rs

from clew.schema.errors import InvalidSchemaError

Schema: TypeAlias = dict[str, Any] | bool
"""A JSON Schema (draft 2020-12) as decoded JSON: an object or a boolean."""

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_ACCEPTED_DIALECTS = {DRAFT_2020_12, DRAFT_2020_12 + "#"}
_UNSUPPORTED = {
    "$dynamicRef": "dynamic references",
    "$recursiveRef": "recursive references",
    "$anchor": "anchors",
    "$dynamicAnchor": "dynamic anchors",
}
_SUBSCHEMA_MAPS = ("$defs", "definitions", "properties", "patternProperties", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def canonical_json(value: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces): equal documents give equal text.

    >>> canonical_json({"b": 1, "a": [True, None]})
    '{"a":[true,null],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(schema: Schema) -> str:
    """SHA-256 of the canonical JSON text of ``schema``."""
    return hashlib.sha256(canonical_json(schema).encode()).hexdigest()


def compile_validator(schema: Schema) -> jsonschema_rs.Validator:
    """A compiled draft 2020-12 validator that also asserts ``format``."""
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True)


def resolve_pointer(root: Schema, ref: str) -> Schema:
    """The subschema a local ``$ref`` (``#`` or ``#/json/pointer``) points at.

    >>> resolve_pointer({"$defs": {"a b": {"type": "string"}}}, "#/$defs/a%20b")
    {'type': 'string'}
    """
    if not ref.startswith("#"):
        raise InvalidSchemaError(
            f"$ref {ref!r} points outside the schema: only local references (#/$defs/...) "
            "are supported; put shared definitions in the plan's defs.yaml"
        )
    pointer = unquote(ref[1:])
    if pointer and not pointer.startswith("/"):
        raise InvalidSchemaError(f"$ref {ref!r}: anchors are not supported, use #/$defs/<name>")
    node: Any = root
    for token in pointer.split("/")[1:] if pointer else []:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise InvalidSchemaError(f"$ref {ref!r} points at nothing in the schema")
    if not isinstance(node, dict | bool):
        raise InvalidSchemaError(f"$ref {ref!r} does not point at a schema")
    return node


def subschemas(schema: Schema) -> Iterator[Schema]:
    """Every subschema directly below ``schema`` (not recursive)."""
    if not isinstance(schema, dict):
        return
    for key in _SUBSCHEMA_MAPS:
        value = schema.get(key)
        if isinstance(value, dict):
            yield from (v for v in value.values() if isinstance(v, dict | bool))
    for key in _SUBSCHEMA_LISTS:
        value = schema.get(key)
        if isinstance(value, list):
            yield from (v for v in value if isinstance(v, dict | bool))
    for key, value in schema.items():
        if key not in _SUBSCHEMA_MAPS and key not in _SUBSCHEMA_LISTS:
            if key in ("enum", "const", "default", "examples", "required"):
                continue
            if isinstance(value, dict):
                yield value


def walk(schema: Schema) -> Iterator[dict[str, Any]]:
    """``schema`` and every subschema below it, depth first."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(subschemas(node))


def local_refs(schema: Schema) -> Iterator[str]:
    """Every ``$ref`` value found anywhere in ``schema``."""
    for node in walk(schema):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref


def check_schema(schema: Any) -> None:
    """Raise :class:`InvalidSchemaError` unless ``schema`` is a draft 2020-12 JSON Schema that
    Clew can publish: valid against the meta-schema, only local references that resolve, and
    compilable."""
    if not isinstance(schema, dict | bool):
        raise InvalidSchemaError(
            f"a schema must be a JSON object or a boolean, not {type(schema).__name__}"
        )
    if isinstance(schema, dict):
        dialect = schema.get("$schema")
        if dialect is not None and dialect not in _ACCEPTED_DIALECTS:
            raise InvalidSchemaError(
                f"$schema is {dialect!r}: Clew validates with JSON Schema draft 2020-12; "
                f"remove $schema or set it to {DRAFT_2020_12!r}"
            )
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as e:
        where = "/".join(str(p) for p in e.instance_path) or "(root)"
        raise InvalidSchemaError(f"not a valid JSON Schema at {where}: {e.message}") from None
    for node in walk(schema):
        for keyword, what in _UNSUPPORTED.items():
            if keyword in node:
                raise InvalidSchemaError(f"{keyword}: {what} are not supported, use $ref")
    for ref in local_refs(schema):
        resolve_pointer(schema, ref)
    try:
        compile_validator(schema)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as e:
        raise InvalidSchemaError(f"the schema does not compile: {e}") from None
