"""Each kind of breaking change is caught in the direction it breaks, and its compatible
counterpart is accepted."""

from __future__ import annotations

from typing import Any

import pytest

from clew.schema.changes import ChangeKind as K
from clew.schema.changes import Direction
from clew.schema.compat import Compatibility, check, check_mode, diff

B, F = Direction.BACKWARD, Direction.FORWARD


def obj(
    props: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = False, **extra: Any
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


S, INT, N = {"type": "string"}, {"type": "integer"}, {"type": "number"}

# (id, old, new, {direction: [(path, kind)]}); a direction not listed must find nothing.
CASES: list[tuple[str, Any, Any, dict[Direction, list[tuple[str, K]]]]] = [
    (
        "add property to open model",
        obj({"a": S}),
        obj({"a": S, "coupon": S}),
        {B: [("properties.coupon", K.PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL)]},
    ),
    ("add unconstrained property to open model", obj({"a": S}), obj({"a": S, "note": {}}), {}),
    (
        "add optional property to closed model",
        obj({"a": S}, closed=True),
        obj({"a": S, "coupon": S}, closed=True),
        {F: [("properties.coupon", K.PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL)]},
    ),
    (
        "add optional property to model closed by unevaluatedProperties",
        obj({"a": S}, unevaluatedProperties=False),
        obj({"a": S, "coupon": S}, unevaluatedProperties=False),
        {F: [("properties.coupon", K.PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL)]},
    ),
    (
        "remove property from closed model",
        obj({"a": S, "b": S}, closed=True),
        obj({"a": S}, closed=True),
        {B: [("properties.b", K.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL)]},
    ),
    (
        "remove property from open model",
        obj({"a": S, "b": S}),
        obj({"a": S}),
        {F: [("properties.b", K.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL)]},
    ),
    (
        "optional property made required",
        obj({"a": S, "b": S}),
        obj({"a": S, "b": S}, ("b",)),
        {B: [("required.b", K.PROPERTY_MADE_REQUIRED)]},
    ),
    (
        "required property made optional",
        obj({"a": S, "b": S}, ("b",)),
        obj({"a": S, "b": S}),
        {F: [("required.b", K.PROPERTY_MADE_OPTIONAL)]},
    ),
    (
        "required property added to closed model",
        obj({"a": S}, closed=True),
        obj({"a": S, "b": S}, ("b",), closed=True),
        {
            B: [("required.b", K.REQUIRED_PROPERTY_ADDED)],
            F: [("properties.b", K.PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL)],
        },
    ),
    (
        "required property removed from open model",
        obj({"a": S, "b": S}, ("b",)),
        obj({"a": S}),
        {
            F: [
                ("properties.b", K.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL),
                ("required.b", K.REQUIRED_PROPERTY_REMOVED),
            ]
        },
    ),
    (
        "open model closed",
        obj({"a": S}),
        obj({"a": S}, closed=True),
        {B: [("additionalProperties", K.CONTENT_MODEL_CLOSED)]},
    ),
    (
        "closed model opened",
        obj({"a": S}, closed=True),
        obj({"a": S}),
        {F: [("additionalProperties", K.CONTENT_MODEL_OPENED)]},
    ),
    (
        "property added inside partially open model's schema",
        obj({"a": S}, additionalProperties=S),
        obj({"a": S, "b": {"type": "string", "maxLength": 5}}, additionalProperties=S),
        {
            B: [
                (
                    "properties.b",
                    K.PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                )
            ]
        },
    ),
    (
        "property added covered by partially open model",
        obj({"a": S}, additionalProperties=S),
        obj({"a": S, "b": S}, additionalProperties=S),
        {},
    ),
    (
        "schema of additional properties narrowed",
        obj({"a": S}, additionalProperties=N),
        obj({"a": S}, additionalProperties=INT),
        {
            B: [("additionalProperties", K.ADDITIONAL_PROPERTIES_NARROWED)],
        },
    ),
    (
        "integer widened to number",
        obj({"p": INT}),
        obj({"p": N}),
        {F: [("properties.p", K.TYPE_WIDENED)]},
    ),
    (
        "number narrowed to integer",
        obj({"p": N}),
        obj({"p": INT}),
        {B: [("properties.p", K.TYPE_NARROWED)]},
    ),
    (
        "type added to a union",
        obj({"p": S}),
        obj({"p": {"type": ["string", "null"]}}),
        {F: [("properties.p", K.TYPE_WIDENED)]},
    ),
    (
        "type removed from a union",
        obj({"p": {"type": ["string", "null"]}}),
        obj({"p": S}),
        {B: [("properties.p", K.TYPE_NARROWED)]},
    ),
    (
        "type changed",
        obj({"p": S}),
        obj({"p": INT}),
        {B: [("properties.p", K.TYPE_CHANGED)], F: [("properties.p", K.TYPE_CHANGED)]},
    ),
    (
        "type set on an untyped property",
        obj({"p": {}}),
        obj({"p": S}),
        {B: [("properties.p", K.TYPE_NARROWED)]},
    ),
    (
        "enum value added",
        obj({"m": {"enum": ["email", "google"]}}),
        obj({"m": {"enum": ["email", "google", "apple"]}}),
        {F: [("properties.m", K.ENUM_VALUE_ADDED)]},
    ),
    (
        "enum value removed",
        obj({"m": {"enum": ["email", "google"]}}),
        obj({"m": {"enum": ["email"]}}),
        {B: [("properties.m", K.ENUM_VALUE_REMOVED)]},
    ),
    (
        "enum added to a string",
        obj({"m": S}),
        obj({"m": {"type": "string", "enum": ["email"]}}),
        {B: [("properties.m", K.ENUM_ADDED)]},
    ),
    (
        "enum turned into an equivalent const",
        obj({"m": {"enum": ["email"]}}),
        obj({"m": {"const": "email"}}),
        {},
    ),
    (
        "maximum lowered",
        obj({"p": {"type": "number", "maximum": 100}}),
        obj({"p": {"type": "number", "maximum": 50}}),
        {B: [("properties.p.maximum", K.MAXIMUM_DECREASED)]},
    ),
    (
        "maximum raised",
        obj({"p": {"type": "number", "maximum": 50}}),
        obj({"p": {"type": "number", "maximum": 100}}),
        {F: [("properties.p.maximum", K.MAXIMUM_INCREASED)]},
    ),
    (
        "minimum added",
        obj({"p": N}),
        obj({"p": {"type": "number", "minimum": 0}}),
        {B: [("properties.p.minimum", K.MINIMUM_ADDED)]},
    ),
    (
        "minimum removed",
        obj({"p": {"type": "number", "minimum": 0}}),
        obj({"p": N}),
        {F: [("properties.p.minimum", K.MINIMUM_REMOVED)]},
    ),
    (
        "inclusive minimum made exclusive",
        obj({"p": {"type": "number", "minimum": 0}}),
        obj({"p": {"type": "number", "exclusiveMinimum": 0}}),
        {B: [("properties.p.exclusiveMinimum", K.EXCLUSIVE_MINIMUM_ADDED)]},
    ),
    (
        "exclusive minimum made inclusive at the same value",
        obj({"p": {"type": "number", "exclusiveMinimum": 0}}),
        obj({"p": {"type": "number", "minimum": 0}}),
        {F: [("properties.p.exclusiveMinimum", K.EXCLUSIVE_MINIMUM_REMOVED)]},
    ),
    (
        "multipleOf coarsened",
        obj({"p": {"type": "number", "multipleOf": 0.25}}),
        obj({"p": {"type": "number", "multipleOf": 0.5}}),
        {B: [("properties.p.multipleOf", K.MULTIPLE_OF_CHANGED)]},
    ),
    (
        "maxLength lowered",
        obj({"s": {"type": "string", "maxLength": 20}}),
        obj({"s": {"type": "string", "maxLength": 10}}),
        {B: [("properties.s.maxLength", K.MAX_LENGTH_DECREASED)]},
    ),
    (
        "minLength raised",
        obj({"s": {"type": "string", "minLength": 1}}),
        obj({"s": {"type": "string", "minLength": 3}}),
        {B: [("properties.s.minLength", K.MIN_LENGTH_INCREASED)]},
    ),
    (
        "pattern added",
        obj({"c": S}),
        obj({"c": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
        {B: [("properties.c.pattern", K.PATTERN_ADDED)]},
    ),
    (
        "pattern removed",
        obj({"c": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
        obj({"c": S}),
        {F: [("properties.c.pattern", K.PATTERN_REMOVED)]},
    ),
    (
        "pattern changed",
        obj({"c": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
        obj({"c": {"type": "string", "pattern": "^[a-z]{3}$"}}),
        {
            B: [("properties.c.pattern", K.PATTERN_CHANGED)],
            F: [("properties.c.pattern", K.PATTERN_CHANGED)],
        },
    ),
    (
        "format added",
        obj({"e": S}),
        obj({"e": {"type": "string", "format": "email"}}),
        {B: [("properties.e.format", K.FORMAT_ADDED)]},
    ),
    (
        "minItems raised",
        obj({"l": {"type": "array", "minItems": 0}}),
        obj({"l": {"type": "array", "minItems": 1}}),
        {B: [("properties.l.minItems", K.MIN_ITEMS_INCREASED)]},
    ),
    (
        "maxItems added",
        obj({"l": {"type": "array"}}),
        obj({"l": {"type": "array", "maxItems": 10}}),
        {B: [("properties.l.maxItems", K.MAX_ITEMS_ADDED)]},
    ),
    (
        "uniqueItems added",
        obj({"l": {"type": "array"}}),
        obj({"l": {"type": "array", "uniqueItems": True}}),
        {B: [("properties.l.uniqueItems", K.UNIQUE_ITEMS_ADDED)]},
    ),
    (
        "array items narrowed",
        obj({"l": {"type": "array", "items": N}}),
        obj({"l": {"type": "array", "items": INT}}),
        {B: [("properties.l.items", K.TYPE_NARROWED)]},
    ),
    (
        "property forbidden with false",
        obj({"a": S, "legacy": S}),
        obj({"a": S, "legacy": False}),
        {B: [("properties.legacy", K.VALUE_FORBIDDEN)]},
    ),
    (
        "alternative added to anyOf",
        obj({"v": {"anyOf": [S, INT]}}),
        obj({"v": {"anyOf": [S, INT, {"type": "boolean"}]}}),
        {F: [("properties.v", K.TYPE_WIDENED)]},
    ),
    (
        "alternative removed from a oneOf of objects",
        obj(
            {
                "v": {
                    "oneOf": [
                        obj({"a": S}, ("a",), closed=True),
                        obj({"b": S}, ("b",), closed=True),
                    ]
                }
            }
        ),
        obj({"v": {"oneOf": [obj({"a": S}, ("a",), closed=True)]}}),
        {
            B: [
                ("properties.v.properties.b", K.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL),
                ("properties.v.required.a", K.REQUIRED_PROPERTY_ADDED),
            ]
        },
    ),
    (
        "dependentRequired added",
        obj({"a": S, "b": S}),
        obj({"a": S, "b": S}, dependentRequired={"a": ["b"]}),
        {B: [("dependentRequired.a", K.DEPENDENT_REQUIRED_ADDED)]},
    ),
    (
        "not added",
        obj({"a": S}),
        obj({"a": S}, **{"not": {"required": ["x"]}}),
        {B: [("not", K.KEYWORD_CHANGED)]},
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("direction", [B, F])
def test_change_is_caught_in_the_direction_it_breaks(
    old: Any, new: Any, expected: dict[Direction, list[tuple[str, K]]], direction: Direction
) -> None:
    found = check(old, new, direction)
    assert [(c.path, c.kind) for c in found] == expected.get(direction, [])
    assert all(c.breaks is direction and c.message for c in found)


PRODUCT = obj({"product_id": S, "price": N, "quantity": INT}, ("product_id", "price"), closed=True)


def order(item: Any, **defs: Any) -> dict[str, Any]:
    schema = obj({"order_id": S, "products": {"type": "array", "items": item}}, ("order_id",))
    if defs:
        schema["$defs"] = defs
    return schema


def test_nested_array_items_report_the_full_path() -> None:
    cheaper = {**PRODUCT, "properties": {**PRODUCT["properties"], "price": INT}}
    (change,) = check(order(PRODUCT), order(cheaper))
    assert change.path == "properties.products.items.properties.price"
    assert change.kind is K.TYPE_NARROWED
    assert "number" in change.message and "integer" in change.message


def test_refs_to_local_defs_are_resolved() -> None:
    by_ref = order({"$ref": "#/$defs/product"}, product=PRODUCT)
    assert check(by_ref, order(PRODUCT), Direction.FULL) == []
    changed = {**PRODUCT, "required": ["product_id", "price", "quantity"]}
    (change,) = check(by_ref, order({"$ref": "#/$defs/product"}, product=changed))
    assert (change.path, change.kind) == (
        "properties.products.items.required.quantity",
        K.PROPERTY_MADE_REQUIRED,
    )


def test_recursive_schemas_terminate() -> None:
    def tree(label: Any) -> dict[str, Any]:
        node = obj(
            {"label": label, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}
        )
        return {"$defs": {"node": node}, "$ref": "#/$defs/node"}

    assert check(tree(S), tree(S), Direction.FULL) == []
    found = check(tree(N), tree(INT))
    assert {c.kind for c in found} == {K.TYPE_NARROWED}
    assert found[0].path == "properties.label"


def test_all_of_with_shared_base_is_merged() -> None:
    base = obj({"id": S}, ("id",))
    old = {"allOf": [{"$ref": "#/$defs/base"}, obj({"a": S})], "$defs": {"base": base}}
    new = {
        "allOf": [{"$ref": "#/$defs/base"}, obj({"a": S, "b": S}, ("b",))],
        "$defs": {"base": base},
    }
    assert [(c.path, c.kind) for c in check(old, new)] == [
        ("properties.b", K.PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL),
        ("required.b", K.REQUIRED_PROPERTY_ADDED),
    ]


def test_semantic_proof_clears_conservative_findings() -> None:
    old = obj({"v": INT})
    new = obj(
        {"v": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 0}]}}
    )
    structural = check(old, new, semantic=False)
    assert [c.kind for c in structural] == [K.COMPOSITION_NARROWED]
    assert check(old, new, Direction.FULL) == []


def test_rejects_all_marks_changes_no_old_event_survives() -> None:
    (added,) = check(obj({"a": S}, closed=True), obj({"a": S, "b": S}, ("b",), closed=True))
    assert added.rejects_all
    (narrowed,) = check(obj({"a": N}), obj({"a": INT}))
    assert not narrowed.rejects_all


def test_diff_lists_both_directions() -> None:
    changes = diff(obj({"p": S}), obj({"p": INT}))
    assert [c.breaks for c in changes] == [B, F]


V1 = obj({"v": INT})
V2 = obj({"v": S})  # published under NONE: incompatible with V1 both ways


@pytest.mark.parametrize(
    ("mode", "new", "latest_only", "transitive"),
    [
        (Compatibility.BACKWARD, obj({"v": {"type": ["string", "null"]}}), [], [(B, 1)]),
        (Compatibility.FORWARD, obj({"v": {"type": "string", "maxLength": 3}}), [], [(F, 1)]),
        (Compatibility.FULL, {**V2, "title": "v3"}, [], [(B, 1), (F, 1)]),
    ],
)
def test_transitive_modes_check_every_earlier_version(
    mode: Compatibility, new: Any, latest_only: list[Any], transitive: list[tuple[Direction, int]]
) -> None:
    assert check_mode([V1, V2], new, mode) == latest_only
    found = check_mode([V1, V2], new, Compatibility(f"{mode}_TRANSITIVE"))
    assert [(c.breaks, c.against) for c in found] == transitive


def test_full_transitive_reports_each_direction_against_its_version() -> None:
    found = check_mode(
        [V1, V2], obj({"v": {"type": ["string", "boolean"]}}), Compatibility.FULL_TRANSITIVE
    )
    assert {(c.breaks, c.against) for c in found} == {(F, 2), (B, 1), (F, 1)}


def test_none_mode_and_empty_history_check_nothing() -> None:
    assert check_mode([V1], V2, Compatibility.NONE) == []
    assert check_mode([], V2, Compatibility.FULL_TRANSITIVE) == []


def test_full_mode_catches_both_directions() -> None:
    kinds = {c.kind for c in check_mode([obj({"a": S})], obj({"a": S, "b": S}), Compatibility.FULL)}
    assert kinds == {K.PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL}
    kinds = {
        c.kind
        for c in check_mode(
            [obj({"a": S}, closed=True)], obj({"a": S, "b": S}, closed=True), Compatibility.FULL
        )
    }
    assert kinds == {K.PROPERTY_ADDED_TO_CLOSED_CONTENT_MODEL}


def test_mode_parse_names_valid_modes() -> None:
    assert Compatibility.parse("full_transitive") is Compatibility.FULL_TRANSITIVE
    with pytest.raises(ValueError, match="BACKWARD_TRANSITIVE"):
        Compatibility.parse("sideways")
