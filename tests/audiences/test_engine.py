"""The audience engine on its own: every kind of computed trait, windows that decay with the
clock, funnels, late events, merges, and independence from arrival order."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

import msgspec

from clew.audiences.definitions import AudienceCatalog, parse_document
from clew.audiences.engine import Engine
from clew.events import Event, format_time

T0 = 1_767_225_600_000
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
_ids = itertools.count()


def engine(doc: dict[str, Any]) -> Engine:
    return Engine(AudienceCatalog.of(parse_document(doc)))


def ev(name: str, ms: int, type_: str = "track", **props: Any) -> Event:
    ts = format_time(datetime.fromtimestamp(ms / 1000, tz=UTC))
    return Event(
        type=type_,
        message_id=f"m{next(_ids)}",
        timestamp=ts,
        received_at=ts,
        source_id="web",
        user_id="u",
        event=name if type_ == "track" else None,
        name=name if type_ != "track" else None,
        properties=props,
    )


def fold(e: Engine, events: list[Event], computed: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = dict(computed or {})
    for event in events:
        ms = int(datetime.fromisoformat(event.timestamp).timestamp() * 1000)
        c = e.observe(c, event, ms) or c
    return c


KINDS = {
    "traits": [
        {"name": "n", "kind": "count", "event": "Order Completed"},
        {"name": "total", "kind": "sum", "event": "Order Completed", "property": "revenue"},
        {"name": "mean", "kind": "avg", "event": "Order Completed", "property": "revenue"},
        {"name": "low", "kind": "min", "event": "Order Completed", "property": "revenue"},
        {"name": "high", "kind": "max", "event": "Order Completed", "property": "revenue"},
        {"name": "first_cat", "kind": "first", "event": "Order Completed", "property": "category"},
        {"name": "last_cat", "kind": "last", "event": "Order Completed", "property": "category"},
        {"name": "fav", "kind": "most_frequent", "event": "Order Completed",
         "property": "category"},
        {"name": "cats", "kind": "unique_list", "event": "Order Completed", "property": "category"},
        {"name": "ncats", "kind": "unique_count", "event": "Order Completed",
         "property": "category"},
        {"name": "big", "kind": "count", "event": "Order Completed",
         "where": [{"property": "revenue", "op": "gte", "value": 100}]},
        {"name": "views", "kind": "count", "event_type": "page"},
    ]
}  # fmt: skip


def test_every_kind_of_computed_trait() -> None:
    e = engine(KINDS)
    events = [
        ev("Order Completed", T0, revenue=50, category="shoes"),
        ev("Order Completed", T0 + MIN, revenue="150", category="hats"),
        ev("Order Completed", T0 + 2 * MIN, revenue=10, category="shoes"),
        ev("Order Completed", T0 + 3 * MIN, revenue="n/a", category="bags"),
        ev("Product Viewed", T0 + 4 * MIN, revenue=999, category="x"),
        ev("Home", T0 + 5 * MIN, type_="page"),
    ]
    result = e.evaluate({}, fold(e, events), T0 + HOUR)
    c = result.computed
    assert c["n"] == 4
    assert c["total"] == 210  # "150" counts as a number; "n/a" is skipped
    assert c["mean"] == 70
    assert (c["low"], c["high"]) == (10, 150)
    assert (c["first_cat"], c["last_cat"]) == ("shoes", "bags")
    assert c["fav"] == "shoes"
    assert c["cats"] == ["bags", "hats", "shoes"]
    assert c["ncats"] == 3
    assert c["big"] == 1
    assert c["views"] == 1
    assert {ch.name for ch in result.changes} == {t["name"] for t in KINDS["traits"]}
    assert result.next_due_ms is None  # nothing here changes with time


def test_an_event_without_a_name_counts_once() -> None:
    # A page call need not name the page; "any event" traits used to see such an event twice.
    e = engine({"traits": [
        {"name": "views", "kind": "count", "event_type": "page"},
        {"name": "active_7d", "kind": "count", "event": "*", "window": "7d"},
        {"name": "home_views", "kind": "count", "event": "Home", "event_type": "page"},
    ]})  # fmt: skip
    unnamed = msgspec.structs.replace(ev("", T0, type_="page"), name=None)
    c = e.evaluate({}, fold(e, [unnamed, ev("Home", T0 + MIN, type_="page")]), T0 + HOUR).computed
    assert (c["views"], c["active_7d"], c["home_views"]) == (2, 2, 1)


def test_a_window_decays_with_the_clock_and_says_when() -> None:
    e = engine({"traits": [{"name": "w", "kind": "sum", "event": "Buy", "property": "x",
                             "window": "1h"}]})  # fmt: skip
    c = fold(e, [ev("Buy", T0, x=1), ev("Buy", T0 + 30 * MIN, x=2)])
    first = e.evaluate({}, c, T0 + 31 * MIN)
    assert first.computed["w"] == 3
    assert first.next_due_ms == T0 + HOUR
    second = e.evaluate({}, first.computed, T0 + HOUR)
    assert second.computed["w"] == 2
    assert second.next_due_ms == T0 + 90 * MIN
    assert [(ch.kind, ch.value, ch.previous) for ch in second.changes] == [("trait_changed", 2, 3)]
    third = e.evaluate({}, second.computed, T0 + 2 * HOUR)
    assert third.computed["w"] == 0
    assert third.next_due_ms is None


def test_a_late_event_outside_its_window_changes_nothing_and_inside_it_counts() -> None:
    e = engine({"traits": [{"name": "w", "kind": "count", "event": "Buy", "window": "1h"}]})
    c = fold(e, [ev("Buy", T0 - 2 * HOUR), ev("Buy", T0 - 10 * MIN)])
    assert e.evaluate({}, c, T0).computed["w"] == 1


FUNNEL = {
    "audiences": [
        {
            "name": "cart",
            "condition": {
                "funnel": {"did": "Product Added", "then_not": "Order Completed", "within": "1h"}
            },
        }
    ]
}


def test_funnel_matures_from_the_first_unanswered_step_and_a_later_order_undoes_it() -> None:
    e = engine(FUNNEL)
    c = fold(e, [ev("Product Added", T0), ev("Product Added", T0 + 20 * MIN)])
    early = e.evaluate({}, c, T0 + 59 * MIN)
    assert early.computed["audiences"] == []
    assert early.next_due_ms == T0 + HOUR  # the first add counts, not the last
    due = e.evaluate({}, early.computed, T0 + HOUR)
    assert due.computed["audiences"] == ["cart"]
    assert [ch.kind for ch in due.changes] == ["audience_entered"]
    ordered = fold(e, [ev("Order Completed", T0 + 2 * HOUR)], due.computed)
    after = e.evaluate({}, ordered, T0 + 2 * HOUR)
    assert after.computed["audiences"] == []
    assert [ch.kind for ch in after.changes] == ["audience_exited"]


def test_a_late_order_inside_the_hour_revises_the_membership() -> None:
    e = engine(FUNNEL)
    c = fold(e, [ev("Product Added", T0)])
    inside = e.evaluate({}, c, T0 + 2 * HOUR)
    assert inside.computed["audiences"] == ["cart"]
    late = fold(e, [ev("Order Completed", T0 + 30 * MIN)], inside.computed)
    assert e.evaluate({}, late, T0 + 2 * HOUR).computed["audiences"] == []
    # An add older than the last order was answered by it.
    older = fold(e, [ev("Product Added", T0 + 10 * MIN)], late)
    assert e.evaluate({}, older, T0 + 3 * HOUR).computed["audiences"] == []


CONDITIONS = {
    "traits": [{"name": "ltv", "kind": "sum", "event": "Order Completed", "property": "revenue"}],
    "audiences": [
        {"name": "vip", "condition": {"computed": "ltv", "op": "gte", "value": 500}},
        {"name": "pro", "condition": {"trait": "plan", "op": "eq", "value": "pro"}},
        {"name": "active", "condition": {"event": "*", "within": "7d"}},
        {"name": "quiet", "condition": {"did_not": "Order Completed", "within": "30d"}},
        {"name": "twice", "condition": {"event": "Order Completed", "exactly": 2}},
        {"name": "big_spender", "condition": {"event": "Order Completed", "within": "30d",
                                              "sum": "revenue", "op": "gt", "value": 100}},
        {"name": "vip_or_pro_not_active", "condition": {"all": [
            {"any": [{"audience": "vip"}, {"audience": "pro"}]},
            {"not": {"audience": "active"}}]}},
    ],
}  # fmt: skip


def test_conditions_over_traits_events_and_other_audiences() -> None:
    e = engine(CONDITIONS)
    c = fold(e, [ev("Order Completed", T0, revenue=300), ev("Order Completed", T0, revenue=250)])
    now = e.evaluate({"plan": "free"}, c, T0 + HOUR)
    assert now.computed["audiences"] == ["active", "big_spender", "twice", "vip"]
    later = e.evaluate({"plan": "pro"}, now.computed, T0 + 31 * DAY)
    assert later.computed["audiences"] == ["pro", "quiet", "twice", "vip", "vip_or_pro_not_active"]
    assert e.evaluate({}, {}, T0).computed["audiences"] == ["quiet"]


def test_merging_two_profiles_combines_their_state() -> None:
    e = engine({**CONDITIONS, **FUNNEL, "audiences": CONDITIONS["audiences"] + FUNNEL["audiences"]})
    a = fold(e, [ev("Order Completed", T0, revenue=300), ev("Product Added", T0 + MIN)])
    b = fold(e, [ev("Order Completed", T0 + 5 * MIN, revenue=250)])
    merged = e.merge({**b, **a}, a, b)
    both = e.evaluate({}, merged, T0 + 2 * HOUR).computed
    alone = e.evaluate({}, fold(e, [
        ev("Order Completed", T0, revenue=300),
        ev("Product Added", T0 + MIN),
        ev("Order Completed", T0 + 5 * MIN, revenue=250),
    ]), T0 + 2 * HOUR).computed  # fmt: skip
    assert both["ltv"] == alone["ltv"] == 550
    assert both["audiences"] == alone["audiences"]
    assert "cart" not in both["audiences"]  # b's order came after a's add


def test_state_does_not_depend_on_arrival_order() -> None:
    doc = {
        "traits": KINDS["traits"] + CONDITIONS["traits"]
        + [{"name": "w", "kind": "unique_list", "event": "Order Completed",
            "property": "category", "window": "2h"}],
        "audiences": CONDITIONS["audiences"] + FUNNEL["audiences"],
    }  # fmt: skip
    e = engine(doc)
    rng = random.Random(3)
    events = [
        ev(
            rng.choice(["Order Completed", "Product Added", "Product Viewed"]),
            T0 + rng.randrange(0, 3 * HOUR),
            revenue=rng.randrange(1, 200),
            category=rng.choice("abcd"),
        )
        for _ in range(200)
    ]
    expected = e.evaluate({}, fold(e, events), T0 + 4 * HOUR).computed
    for _ in range(5):
        rng.shuffle(events)
        got = e.evaluate({}, fold(e, events), T0 + 4 * HOUR).computed
        assert {k: v for k, v in got.items() if k != "_aud"} == {
            k: v for k, v in expected.items() if k != "_aud"
        }
