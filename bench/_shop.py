"""The traffic and definitions of bench/audiences.py: an online shop's visitors, and 20
computed traits and 20 audiences of the kinds a marketing team defines."""

from __future__ import annotations

import itertools
import random
import secrets
from datetime import UTC, datetime
from typing import Any

MEMBER = "buyer"
TIMER_AUDIENCE = "cart_abandoner_1m"
EVENT_AUDIENCE = "added_to_cart"

DEFINITIONS: dict[str, list[dict[str, Any]]] = {
    "traits": [
        {"name": "orders", "kind": "count", "event": "Order Completed"},
        {"name": "orders_30d", "kind": "count", "event": "Order Completed", "window": "30d"},
        {"name": "revenue", "kind": "sum", "event": "Order Completed", "property": "revenue"},
        {"name": "ltv_365d", "kind": "sum", "event": "Order Completed", "property": "revenue",
         "window": "365d"},
        {"name": "avg_order", "kind": "avg", "event": "Order Completed", "property": "revenue"},
        {"name": "max_order", "kind": "max", "event": "Order Completed", "property": "revenue"},
        {"name": "min_order_30d", "kind": "min", "event": "Order Completed",
         "property": "revenue", "window": "30d"},
        {"name": "favourite_category", "kind": "most_frequent", "event": "Product Viewed",
         "property": "category"},
        {"name": "categories_30d", "kind": "unique_count", "event": "Product Viewed",
         "property": "category", "window": "30d"},
        {"name": "added_7d", "kind": "count", "event": "Product Added", "window": "7d"},
        {"name": "events_1h", "kind": "count", "window": "1h"},
        # Page views by their path, not `type: page`: a trait's own `type` key is stored over
        # its definition file's `"type": "trait"`, and the stage then cannot read the set.
        {"name": "pages_7d", "kind": "count", "where": [{"property": "path", "op": "exists"}],
         "window": "7d"},
        {"name": "views_1h", "kind": "count", "event": "Product Viewed", "window": "1h"},
        {"name": "last_category", "kind": "last", "event": "Product Viewed",
         "property": "category"},
        {"name": "first_order", "kind": "first", "event": "Order Completed",
         "property": "revenue"},
        {"name": "cart_value_7d", "kind": "sum", "event": "Product Added", "property": "price",
         "window": "7d"},
        {"name": "shoe_orders", "kind": "count", "event": "Order Completed",
         "where": {"category": "shoes"}},
        {"name": "big_orders_365d", "kind": "count", "event": "Order Completed",
         "where": [{"property": "revenue", "op": "gte", "value": 200}], "window": "365d"},
        {"name": "campaign_sources", "kind": "unique_list", "property": "context.campaign.source"},
        {"name": "logins_30d", "kind": "count", "event": "Signed In", "window": "30d"},
    ],
    "audiences": [
        {"name": MEMBER, "condition": {"event": "Order Completed"}},
        {"name": "repeat_buyer", "condition": {"event": "Order Completed", "at_least": 3}},
        {"name": "high_value_customer",
         "condition": {"computed": "ltv_365d", "op": "gte", "value": 500}},
        {"name": "active_7d", "condition": {"event": "*", "within": "7d"}},
        {"name": "active_1h", "condition": {"event": "*", "within": "1h"}},
        {"name": "cart_abandoner", "condition": {"funnel": {
            "did": "Product Added", "then_not": "Order Completed", "within": "1h"}}},
        {"name": "checkout_abandoner", "condition": {"funnel": {
            "did": "Checkout Started", "then_not": "Order Completed", "within": "30m"}}},
        {"name": "lapsed_vip", "condition": {"all": [
            {"audience": "high_value_customer"}, {"not": {"audience": "active_7d"}}]}},
        {"name": "window_shopper", "condition": {"all": [
            {"event": "Product Viewed", "at_least": 5, "within": "7d"},
            {"did_not": "Order Completed", "within": "30d"}]}},
        {"name": "shoe_lover",
         "condition": {"computed": "favourite_category", "op": "eq", "value": "shoes"}},
        {"name": "big_spender_30d", "condition": {
            "event": "Order Completed", "sum": "revenue", "op": "gte", "value": 300,
            "within": "30d"}},
        {"name": "engaged_reader", "condition": {"computed": "pages_7d", "op": "gte", "value": 10}},
        {"name": "deal_seeker", "condition": {
            "event": "Product Added", "where": [{"property": "price", "op": "lt", "value": 20}],
            "at_least": 2, "within": "30d"}},
        {"name": "pro_plan", "condition": {"trait": "plan", "op": "eq", "value": "pro"}},
        {"name": "pro_buyer", "condition": {"all": [
            {"audience": "pro_plan"}, {"audience": MEMBER}]}},
        {"name": "newsletter_prospect", "condition": {"all": [
            {"trait": "email"}, {"not": {"audience": MEMBER}}]}},
        {"name": "multi_category",
         "condition": {"computed": "categories_30d", "op": "gte", "value": 3}},
        {"name": "at_risk", "condition": {"all": [
            {"audience": "repeat_buyer"}, {"did_not": "Order Completed", "within": "7d"}]}},
        {"name": "hot_lead", "condition": {"all": [
            {"audience": "active_1h"}, {"audience": "cart_abandoner"}]}},
        {"name": "vip", "condition": {"any": [
            {"audience": "high_value_customer"}, {"audience": "big_spender_30d"},
            {"computed": "avg_order", "op": "gte", "value": 150}]}},
    ],
}  # fmt: skip
"""A realistic mix: every kind of trait, windows of 1h to 365d, filters, funnels, did_not,
audiences of audiences and comparisons with traits and computed traits."""


def timer_definitions(within: str) -> dict[str, list[dict[str, Any]]]:
    """:data:`DEFINITIONS` plus part 3's timer-driven audience and its event-driven twin."""
    funnel = {"did": "Product Added", "then_not": "Order Completed", "within": within}
    return {
        "traits": DEFINITIONS["traits"],
        "audiences": [
            *DEFINITIONS["audiences"],
            {"name": TIMER_AUDIENCE, "condition": {"funnel": funnel}},
            {"name": EVENT_AUDIENCE, "condition": {"event": "Product Added"}},
        ],
    }


CATEGORIES = ("shoes", "shirts", "bags", "hats", "watches", "books")
PAGES = ("Home", "Category", "Search", "Product", "Cart")
# (type, event name, weight): mostly browsing, some carts and orders, a few identifies.
MIX = (
    ("page", None, 28),
    ("track", "Product Viewed", 32),
    ("track", "Product Added", 12),
    ("track", "Product Removed", 3),
    ("track", "Checkout Started", 5),
    ("track", "Order Completed", 6),
    ("track", "Signed In", 4),
    ("identify", None, 10),
)


class Shop:
    """Segment-shaped events of an online shop's visitors, in sessions: ``sessions`` people
    are browsing at any time, each session lasting about ten events. A visitor is anonymous
    until signed in (then events carry both ids, and identifies link them)."""

    def __init__(self, people: int, seed: int = 7, sessions: int = 200) -> None:
        self.people = people
        self.rng = random.Random(seed)
        self._kinds = [(t, n) for t, n, _ in MIX]
        self._weights = [w for _, _, w in MIX]
        self._active = [self.rng.randrange(people) for _ in range(min(sessions, people))]
        self._seq = itertools.count()
        self.run = secrets.token_hex(3)

    def event(self, timestamp: str) -> dict[str, Any]:
        rng = self.rng
        slot = rng.randrange(len(self._active))
        if rng.random() < 0.1:
            self._active[slot] = rng.randrange(self.people)
        p = self._active[slot]
        etype, name = rng.choices(self._kinds, self._weights)[0]
        seq = next(self._seq)
        favourite = CATEGORIES[p % len(CATEGORIES)]
        category = favourite if rng.random() < 0.5 else rng.choice(CATEGORIES)
        body: dict[str, Any] = {
            "type": etype,
            "messageId": f"{self.run}-{seq}",
            "timestamp": timestamp,
            "anonymousId": f"anon-{p}",
        }
        if etype == "identify" or rng.random() < 0.6 + 0.3 * (p % 2):
            body["userId"] = f"user-{p}"
        if etype == "identify":
            body["traits"] = {
                "email": f"person{p}@shop.test",
                "plan": ("free", "pro", "team")[p % 3],
                "name": f"Person {p}",
            }
            return body
        if etype == "page":
            body["name"] = rng.choice(PAGES)
            body["properties"] = {"path": f"/{body['name'].lower()}", "category": category}
        else:
            body["event"] = name
            body["properties"] = _properties(rng, name, category, seq)
        if rng.random() < 0.1:
            source = rng.choice(("newsletter", "ads", "social"))
            body["context"] = {"campaign": {"source": source}}
        return body


def _properties(rng: random.Random, name: str | None, category: str, seq: int) -> dict[str, Any]:
    price = round(rng.uniform(5, 150), 2)
    product = {"product_id": f"sku-{rng.randrange(500)}", "category": category, "price": price}
    if name in ("Product Viewed", "Product Removed"):
        return product
    if name == "Product Added":
        return {**product, "quantity": rng.randint(1, 3)}
    if name == "Checkout Started":
        return {"value": round(price * rng.uniform(1, 3), 2), "currency": "EUR"}
    if name == "Order Completed":
        revenue = round(rng.uniform(10, 400), 2)
        return {"order_id": f"o{seq}", "revenue": revenue, "currency": "EUR", "category": category}
    return {"method": rng.choice(("password", "google"))}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
