"""Compiled validation returns violations with event paths and keywords, and enforcement
does what each mode says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from clew.demo import simulate
from clew.schema import CompiledPlan, Enforcement, SchemaRegistry, load_plan, push

EXAMPLE = Path(__file__).parents[2] / "examples" / "tracking-plan"


@pytest.fixture(scope="module")
def plan() -> CompiledPlan:
    return CompiledPlan.from_plan(load_plan(EXAMPLE))


def item(**overrides: Any) -> dict[str, Any]:
    return {"product_id": "P1", "sku": "TNT", "price": 189.0, "quantity": 1, **overrides}


def order(**overrides: Any) -> dict[str, Any]:
    props = {"order_id": "o1", "revenue": 189.0, "currency": "USD", "products": [item()]}
    props.update(overrides)
    return {"type": "track", "event": "Order Completed", "properties": props}


def found(plan: CompiledPlan, event: dict[str, Any]) -> list[tuple[str, str]]:
    return [(v.path, v.keyword) for v in plan.validate(event)]


def test_valid_event_has_no_violations(plan: CompiledPlan) -> None:
    assert plan.validate(order()) == []


def test_missing_required_property_points_at_it(plan: CompiledPlan) -> None:
    event = order()
    del event["properties"]["revenue"]
    (v,) = plan.validate(event)
    assert (v.path, v.keyword) == ("$.properties.revenue", "required")
    assert "revenue" in v.message
    assert (v.subject, v.version) == ("track:Order Completed", "local")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            order(products=[item(), item(price="9.99")]),
            [("$.properties.products[1].price", "type")],
        ),
        (order(products=[item(quantity=0)]), [("$.properties.products[0].quantity", "minimum")]),
        (order(currency="usd"), [("$.properties.currency", "pattern")]),
        (order(products=[]), [("$.properties.products", "minItems")]),
        (
            order(gift_wrap=True, products=[item(colour="red")]),
            [
                ("$.properties.gift_wrap", "additionalProperties"),
                ("$.properties.products[0].colour", "additionalProperties"),
            ],
        ),
        (
            {"type": "identify", "traits": {"email": "not-an-email", "name": ""}},
            [("$.traits.email", "format"), ("$.traits.name", "minLength")],
        ),
        (
            {
                "type": "page",
                "properties": {"url": "/no-scheme"},
                "context": {"app": {"version": 7}},
            },
            [("$.properties.url", "format"), ("$.context.app.version", "type")],
        ),
    ],
)
def test_violations_have_paths_and_keywords(
    plan: CompiledPlan, event: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert sorted(found(plan, event)) == sorted(expected)


def test_unplanned_events(plan: CompiledPlan) -> None:
    assert not plan.is_planned({"type": "track", "event": "Wishlist Shared"})
    assert (
        plan.validate({"type": "track", "event": "Wishlist Shared", "properties": {"x": 1}}) == []
    )
    assert plan.is_planned({"type": "screen", "name": "Home"})  # no screen schema: not validated
    assert plan.is_planned({"type": "group", "groupId": "g"})


def test_strip_unplanned_keeps_declared_properties(plan: CompiledPlan) -> None:
    event = order(gift_wrap=True)
    stripped = plan.strip_unplanned(event)
    assert "gift_wrap" not in stripped["properties"]
    assert "gift_wrap" in event["properties"]  # the input is left alone
    assert stripped["properties"]["order_id"] == "o1"
    clean = order()
    assert plan.strip_unplanned(clean) is clean
    traits = {"type": "identify", "traits": {"email": "a@b.co", "shoe_size": 44}}
    assert plan.strip_unplanned(traits)["traits"] == {"email": "a@b.co"}


def test_explicitly_allowed_other_properties_are_planned() -> None:
    schema = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "string"}}
    plan = CompiledPlan("web", Enforcement.OMIT_UNPLANNED_PROPERTIES, {"page": (schema, "1-0-0")})
    event = {"type": "page", "properties": {"a": 1, "b": "kept"}}
    assert plan.strip_unplanned(event) is event
    open_plan = CompiledPlan("web", Enforcement.ALLOW, {"page": ({"type": "object"}, "1-0-0")})
    assert open_plan.strip_unplanned(event)["properties"] == {}


_PLAN = load_plan(EXAMPLE)
_SCHEMAS = {s.subject: (s.schema, "1-0-0") for s in _PLAN.subjects.values()}


@pytest.mark.parametrize(
    ("mode", "accepted", "reason", "omitted"),
    [
        (Enforcement.ALLOW, True, None, []),
        (Enforcement.OMIT_UNPLANNED_PROPERTIES, True, None, ["$.properties.gift_wrap"]),
        (Enforcement.BLOCK_UNPLANNED_EVENTS, True, None, ["$.properties.gift_wrap"]),
        (Enforcement.BLOCK_VIOLATIONS, False, "schema_violation", ["$.properties.gift_wrap"]),
    ],
)
def test_enforce_invalid_event(
    mode: Enforcement, accepted: bool, reason: str | None, omitted: list[str]
) -> None:
    plan = CompiledPlan("web", mode, _SCHEMAS)
    event = order(gift_wrap=True)
    del event["properties"]["revenue"]
    verdict = plan.enforce(event)
    assert (verdict.accepted, verdict.reason, verdict.omitted) == (accepted, reason, omitted)
    paths = [v.path for v in verdict.violations]
    expected = ["$.properties.revenue"] + ([] if omitted else ["$.properties.gift_wrap"])
    assert sorted(paths) == sorted(expected)
    assert verdict.schema_versions == {"track:Order Completed": "1-0-0", "context": "1-0-0"}
    if accepted:
        recorded = verdict.event["context"]["violations"]
        assert sorted(v["path"] for v in recorded) == sorted(expected)
    assert "context" not in event  # the input is left alone


@pytest.mark.parametrize(
    ("mode", "accepted"),
    [
        (Enforcement.ALLOW, True),
        (Enforcement.OMIT_UNPLANNED_PROPERTIES, True),
        (Enforcement.BLOCK_UNPLANNED_EVENTS, False),
        (Enforcement.BLOCK_VIOLATIONS, False),
    ],
)
def test_enforce_unplanned_event(mode: Enforcement, accepted: bool) -> None:
    plan = CompiledPlan("web", mode, _SCHEMAS)
    verdict = plan.enforce({"type": "track", "event": "Wishlist Shared", "properties": {}})
    assert verdict.accepted is accepted
    assert [(v.path, v.keyword) for v in verdict.violations] == [("$.event", "unplanned")]
    if not accepted:
        assert verdict.reason == "unplanned_event"


def test_valid_event_passes_every_mode_untouched() -> None:
    for mode in Enforcement:
        verdict = CompiledPlan("web", mode, _SCHEMAS).enforce(order())
        assert verdict.accepted and verdict.violations == [] and verdict.event == order()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[SchemaRegistry]:
    reg = SchemaRegistry(tmp_path / "registry.db")
    yield reg
    reg.close()


def test_compiled_from_the_registry(registry: SchemaRegistry) -> None:
    push(registry, _PLAN)
    plan = CompiledPlan.from_registry(registry, "default")
    assert plan.enforcement is Enforcement.BLOCK_VIOLATIONS
    assert plan.revision == registry.revision("default")
    assert len(plan.subjects) == len(_PLAN.subjects)
    event = order()
    del event["properties"]["currency"]
    (v,) = plan.validate(event)
    assert (v.path, v.version) == ("$.properties.currency", "1-0-0")


def test_the_demo_shop_traffic_follows_the_example_plan(plan: CompiledPlan) -> None:
    traffic = simulate(40, 7, datetime(2026, 1, 5, tzinfo=UTC), "test")
    names = {e["event"] for e in traffic.events if e["type"] == "track"}
    assert {"Product Viewed", "Product Added", "Cart Viewed", "Order Completed"} <= names
    for event in traffic.events:
        assert plan.is_planned(event), event.get("event")
        assert plan.validate(event) == [], event
