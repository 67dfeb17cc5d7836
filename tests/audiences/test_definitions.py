"""The definition language (docs/audiences.md): what each form means, and what a user is told
when a definition cannot be used."""

from __future__ import annotations

from typing import Any

import pytest

from clew.audiences.definitions import (
    All,
    AnyOf,
    AudienceCatalog,
    AudienceDef,
    Compare,
    DefinitionError,
    InFunnel,
    Member,
    Not,
    TraitDef,
    parse_document,
    parse_duration,
)
from clew.events import Event


def event(type_: str = "track", name: str | None = None, **properties: Any) -> Event:
    return Event(
        type=type_,
        message_id="m1",
        timestamp="2024-01-01T00:00:00.000Z",
        received_at="2024-01-01T00:00:00.000Z",
        source_id="src",
        event=name if type_ == "track" else None,
        name=name if type_ != "track" else None,
        properties=properties,
        context={"campaign": {"source": "news"}},
    )


def trait(**fields: Any) -> TraitDef:
    (parsed,) = parse_document({"type": "trait", "name": "t", **fields})
    assert isinstance(parsed, TraitDef)
    return parsed


def audience(condition: Any, name: str = "a") -> AudienceDef:
    (parsed,) = parse_document({"type": "audience", "name": name, "condition": condition})
    assert isinstance(parsed, AudienceDef)
    return parsed


def refused(doc: Any) -> str:
    with pytest.raises(DefinitionError) as caught:
        AudienceCatalog.of(parse_document(doc))
    return str(caught.value)


# -- durations and property paths --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("90s", 90_000),
        ("30m", 1_800_000),
        ("30min", 1_800_000),
        ("1h", 3_600_000),
        ("1.5h", 5_400_000),
        ("7d", 604_800_000),
        ("2w", 1_209_600_000),
        (" 1 h ", 3_600_000),
        (60, 60_000),
        (0.5, 500),
    ],
)
def test_durations(text: Any, ms: int) -> None:
    assert parse_duration(text, "x") == ms


@pytest.mark.parametrize("text", ["7", "7 days", "1y", "-1h", "0s", 0, None, True, ""])
def test_bad_durations_say_how_to_write_one(text: Any) -> None:
    with pytest.raises(DefinitionError, match="window"):
        parse_duration(text, "trait 't'.window")


def test_a_bare_property_name_reads_properties_and_a_rooted_path_reads_the_event() -> None:
    assert trait(kind="sum", property="revenue").property == ("properties", "revenue")
    assert trait(kind="last", property="cart.total").property == ("properties", "cart", "total")
    assert trait(kind="last", property="context.campaign.source").property == (
        "context",
        "campaign",
        "source",
    )
    assert trait(kind="last", property="traits.plan").property == ("traits", "plan")


# -- traits ------------------------------------------------------------------------------------


def test_a_trait_with_every_field() -> None:
    t = trait(
        kind="sum",
        event="Order Completed",
        where={"currency": "EUR"},
        property="revenue",
        window="365d",
        description="Revenue in a year",
    )
    assert (t.kind, t.window_ms, t.description) == ("sum", 365 * 86_400_000, "Revenue in a year")
    assert t.match.matches(event(name="Order Completed", currency="EUR", revenue=5))
    assert not t.match.matches(event(name="Order Completed", currency="USD"))
    assert not t.match.matches(event(name="Product Added", currency="EUR"))


def test_star_or_no_event_counts_track_page_and_screen_events_and_names_mean_track() -> None:
    for t in (trait(kind="count"), trait(kind="count", event="*")):
        assert t.match.matches(event("track", "Anything"))
        assert t.match.matches(event("page", "Home"))
        assert t.match.matches(event("screen", "Settings"))
        assert not t.match.matches(event("identify"))
    named = trait(kind="count", event=["Signed Up", "Logged In"])
    assert named.match.matches(event("track", "Logged In"))
    assert not named.match.matches(event("page", "Logged In"))


def test_where_as_a_list_of_filters_with_operators() -> None:
    t = trait(
        kind="count",
        event="Order Completed",
        where=[
            {"property": "revenue", "op": "gte", "value": 100},
            {"property": "context.campaign.source", "op": "in", "value": ["news", "ads"]},
            {"property": "coupon", "op": "not_exists"},
        ],
    )
    assert t.match.matches(event(name="Order Completed", revenue=150))
    assert not t.match.matches(event(name="Order Completed", revenue=50))
    assert not t.match.matches(event(name="Order Completed", revenue=150, coupon="X"))
    assert not t.match.matches(event(name="Order Completed", revenue="lots"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "median", "property": "x"}, "kind 'median' is not one of"),
        ({"kind": "sum"}, "kind 'sum' needs a 'property'"),
        ({"kind": "count", "windw": "1d"}, "unknown key(s) ['windw']"),
        ({"kind": "count", "window": "soon"}, "trait 't'.window: 'soon' is not a duration"),
        ({"kind": "count", "event": 7}, "trait 't'.event: expected a name or a list"),
        ({"kind": "count", "event": []}, "expected a name or a list"),
        ({"kind": "count", "where": [{"property": "x", "op": "like", "value": 1}]}, "op 'like'"),
        ({"kind": "count", "where": [{"property": "x", "op": "in", "value": 1}]}, "needs a list"),
        ({"kind": "count", "where": [{"property": "x", "op": "gt"}]}, "needs a 'value'"),
        ({"kind": "count", "where": "x"}, "expected a mapping or a list of filters"),
    ],
)
def test_trait_errors_name_the_trait_and_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        trait(**fields)
    assert message in str(caught.value)
    assert "trait 't'" in str(caught.value)


@pytest.mark.parametrize("name", ["audiences", "total_lifetime_value", "orders_count"])
def test_a_trait_may_not_take_a_name_clew_maintains(name: str) -> None:
    doc = {"traits": [{"name": name, "kind": "count"}]}
    assert "maintained by Clew; choose another name" in refused(doc)


@pytest.mark.parametrize("name", ["", "1st", "has space", "a-b", "x" * 65, None])
def test_names_are_identifiers(name: Any) -> None:
    assert "use a letter then letters, digits or '_'" in refused(
        {"traits": [{"name": name, "kind": "count"}]}
    )


# -- audience conditions -----------------------------------------------------------------------


def test_all_any_not_and_trait_comparisons() -> None:
    a = audience(
        {
            "all": [
                {"trait": "plan", "op": "in", "value": ["pro", "team"]},
                {"any": [{"trait": "country", "value": "FR"}, {"computed": "orders_count"}]},
                {"not": {"trait": "email", "op": "contains", "value": "@test."}},
            ]
        }
    )
    assert a.condition == All(
        (
            Compare("trait", "plan", "in", ["pro", "team"]),
            AnyOf(
                (
                    Compare("trait", "country", "eq", "FR"),
                    Compare("computed", "orders_count", "exists", None),
                )
            ),
            Not(Compare("trait", "email", "contains", "@test.")),
        )
    )


@pytest.mark.parametrize(
    ("condition", "op", "value"),
    [
        ({"event": "Logged In"}, "gte", 1),
        ({"event": "Logged In", "at_least": 3}, "gte", 3),
        ({"event": "Logged In", "at_most": 2}, "lte", 2),
        ({"event": "Logged In", "exactly": 0}, "eq", 0),
        ({"did_not": "Logged In", "within": "30d"}, "eq", 0),
        ({"event": "Order Completed", "sum": "revenue", "value": 500}, "gte", 500),
        ({"event": "Order Completed", "avg": "revenue", "op": "lt", "value": 20}, "lt", 20),
        ({"event": "Order Completed", "min": "revenue", "op": "gt", "value": 1}, "gt", 1),
        ({"event": "Order Completed", "max": "revenue", "op": "lte", "value": 9}, "lte", 9),
    ],
)
def test_event_conditions_compare_a_hidden_trait(condition: Any, op: str, value: Any) -> None:
    a = audience(condition)
    (hidden,) = a.traits
    assert hidden.hidden
    assert a.condition == Compare("computed", hidden.name, op, value)
    kind = next((k for k in ("sum", "avg", "min", "max") if k in condition), "count")
    assert hidden.kind == kind
    if kind != "count":
        assert hidden.property == ("properties", "revenue")
    if "within" in condition:
        assert hidden.window_ms == 30 * 86_400_000


def test_an_event_condition_with_where_and_within() -> None:
    a = audience({"event": "Product Viewed", "where": {"category": "shoes"}, "within": "7d"})
    (hidden,) = a.traits
    assert hidden.window_ms == 7 * 86_400_000
    assert hidden.match.matches(event(name="Product Viewed", category="shoes"))
    assert not hidden.match.matches(event(name="Product Viewed", category="hats"))


def test_a_funnel_and_audience_membership() -> None:
    a = audience(
        {
            "all": [
                {"funnel": {"did": "Product Added", "then_not": "Order Completed", "within": "1h"}},
                {"not": {"audience": "staff"}},
            ]
        }
    )
    (funnel,) = a.funnels
    assert a.condition == All((InFunnel(funnel.key), Not(Member("staff"))))
    assert funnel.within_ms == 3_600_000
    assert funnel.first.matches(event(name="Product Added"))
    assert funnel.then_not.matches(event(name="Order Completed"))
    assert a.references == {"staff"}


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"trait": "plan", "op": "like", "value": "p"}, "unknown op 'like'"),
        ({"trait": "plan", "op": "gt"}, "op 'gt' needs a 'value'"),
        ({"trait": "plan", "op": "in", "value": "pro"}, "op 'in' needs a list"),
        ({"trait": "plan", "value": 1, "extra": 2}, "unknown key(s) ['extra']"),
        ({"all": []}, "condition.all: expected a non-empty list"),
        ({"all": [{"trait": "a"}], "any": [{"trait": "b"}]}, "unknown key(s) ['any']"),
        ({"someday": 1}, "unknown condition ['someday']"),
        ({"event": "X", "at_least": -1}, "condition.at_least: expected a whole number >= 0"),
        ({"event": "X", "at_least": 1, "sum": "r"}, "give one of at_least"),
        ({"event": "X", "within": "a while"}, "condition.within: 'a while' is not a duration"),
        ({"event": "X", "op": "gt", "value": 3}, "'op' and 'value' go with sum"),
        ({"did_not": "X", "at_least": 2}, "unknown key(s) ['at_least']"),
        ({"funnel": {"did": "A", "within": "1h"}}, "condition.funnel: 'then_not' is required"),
        ({"funnel": {"did": "A", "then_not": "B", "within": "1h", "x": 1}}, "unknown key(s)"),
        ({"audience": 3}, "condition.audience: expected an audience name"),
    ],
)
def test_condition_errors_name_the_audience_and_the_place(condition: Any, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        audience(condition, name="buyers")
    assert message in str(caught.value)
    assert str(caught.value).startswith("audience 'buyers'.condition")


def test_an_audience_needs_a_condition_and_no_unknown_keys() -> None:
    assert "'condition' is required" in refused({"audiences": [{"name": "a"}]})
    doc = {"audiences": [{"name": "a", "condition": {"trait": "x"}, "when": 1}]}
    assert "unknown key(s) ['when']" in refused(doc)


# -- documents and catalogs --------------------------------------------------------------------


def test_a_document_holds_traits_and_audiences_or_one_typed_definition() -> None:
    doc = {
        "traits": [{"name": "ltv", "kind": "sum", "event": "Order Completed", "property": "r"}],
        "audiences": [{"name": "big", "condition": {"computed": "ltv", "op": "gte", "value": 9}}],
    }
    assert [d.name for d in parse_document(doc)] == ["ltv", "big"]
    assert [d.name for d in parse_document({"type": "trait", "name": "n", "kind": "count"})] == [
        "n"
    ]
    assert "unknown key(s) ['segments']" in refused({"segments": []})
    assert "use 'trait' or 'audience'" in refused({"type": "segment", "name": "x"})
    assert "must be a mapping" in refused(["not", "a", "mapping"])


def test_duplicate_names_are_refused_even_across_traits_and_audiences() -> None:
    doc = {
        "traits": [{"name": "vip", "kind": "count"}],
        "audiences": [{"name": "vip", "condition": {"trait": "x"}}],
    }
    assert "'vip' is defined twice; names must be unique" in refused(doc)


def test_an_unknown_audience_reference_is_refused() -> None:
    doc = {"audiences": [{"name": "a", "condition": {"audience": "ghosts"}}]}
    assert "audience 'a' refers to audience 'ghosts', which is not defined" in refused(doc)
    doc["audiences"].append({"name": "ghost", "condition": {"trait": "x"}})
    assert "'ghosts', which is not defined (did you mean 'ghost'?)" in refused(doc)


def test_a_computed_trait_nothing_defines_is_refused_with_the_closest_name() -> None:
    ltv = {"name": "ltv_365d", "kind": "sum", "event": "Order Completed", "property": "revenue"}
    wrong = {"computed": "ltv_365", "op": "gte", "value": 500}
    message = refused({"traits": [ltv], "audiences": [{"name": "vip", "condition": wrong}]})
    assert message == (
        "audience 'vip' reads computed trait 'ltv_365', which is not defined (did you mean "
        "'ltv_365d'?); push the trait first (or in the same document), or read an event's "
        "trait with 'trait:'"
    )
    nested = {"all": [{"trait": "plan"}, {"not": {"computed": "order_count"}}]}
    assert "'order_count', which is not defined (did you mean 'orders_count'?)" in refused(
        {"audiences": [{"name": "vip", "condition": nested}]}
    )


@pytest.mark.parametrize(
    "condition",
    [
        {"computed": "ltv_365d", "op": "gte", "value": 500},
        {"computed": "orders_count", "op": "gte", "value": 2},
        {"consent": "marketing"},
        {"computed": "consent.categoryPreferences.marketing", "value": True},
        {"event": "Order Completed", "within": "30d"},
        {"trait": "not_computed_so_not_checked"},
    ],
)
def test_defined_reserved_and_hidden_computed_values_may_be_read(condition: Any) -> None:
    ltv = {"name": "ltv_365d", "kind": "sum", "event": "Order Completed", "property": "revenue"}
    catalog = AudienceCatalog.of(
        parse_document({"traits": [ltv], "audiences": [{"name": "a", "condition": condition}]})
    )
    assert [a.name for a in catalog.audiences] == ["a"]


def test_membership_cycles_are_refused_and_shown() -> None:
    doc = {
        "audiences": [
            {"name": "a", "condition": {"audience": "b"}},
            {"name": "b", "condition": {"any": [{"trait": "x"}, {"audience": "c"}]}},
            {"name": "c", "condition": {"not": {"audience": "a"}}},
        ]
    }
    assert "cycle: a -> b -> c -> a" in refused(doc)
    itself = {"audiences": [{"name": "a", "condition": {"audience": "a"}}]}
    assert "cycle: a -> a" in refused(itself)


def test_a_catalog_orders_audiences_after_those_they_refer_to() -> None:
    doc = {
        "audiences": [
            {"name": "top", "condition": {"all": [{"audience": "mid"}, {"audience": "base"}]}},
            {"name": "mid", "condition": {"audience": "base"}},
            {"name": "base", "condition": {"trait": "x"}},
        ]
    }
    catalog = AudienceCatalog.of(parse_document(doc))
    assert [a.name for a in catalog.audiences] == ["base", "mid", "top"]


def test_the_fingerprint_changes_with_the_definition_only() -> None:
    one = trait(kind="count", event="A")
    assert trait(kind="count", event="A").fingerprint == one.fingerprint
    assert trait(event="A", kind="count").fingerprint == one.fingerprint
    assert trait(kind="count", event="B").fingerprint != one.fingerprint
