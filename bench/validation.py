"""Validation throughput of a compiled tracking plan, per core.

The plan has 20 subjects: the example e-commerce plan (examples/tracking-plan: context,
identify, page and 8 track events) plus 9 more track events. The events are the demo shop's
simulated traffic (page, track and identify calls with a full context) plus events of the extra
subjects; about 2% of the track events carry a property the plan does not allow. Each pass runs
in this one thread, so events per CPU-second is events per second per core.

    .venv/bin/python bench/validation.py [--events 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clew.demo import simulate
from clew.schema import CompiledPlan, Enforcement, load_plan

TARGET = 100_000
EXAMPLE = Path(__file__).parents[1] / "examples" / "tracking-plan"
_STR = {"type": "string"}
_MONEY = {"type": "number", "minimum": 0}
EXTRA_EVENTS: dict[str, dict[str, Any]] = {
    "Products Searched": {"query": _STR},
    "Product List Viewed": {"list_id": _STR, "category": _STR},
    "Product Clicked": {"product_id": _STR, "position": {"type": "integer", "minimum": 1}},
    "Product Removed": {"product_id": _STR, "quantity": {"type": "integer", "minimum": 1}},
    "Coupon Applied": {"order_id": _STR, "coupon_id": _STR, "discount": _MONEY},
    "Checkout Step Viewed": {"checkout_id": _STR, "step": {"type": "integer", "minimum": 1}},
    "Payment Info Entered": {"checkout_id": _STR, "payment_method": {"enum": ["card", "paypal"]}},
    "Order Refunded": {"order_id": _STR, "total": _MONEY, "currency": {"pattern": "^[A-Z]{3}$"}},
    "Product Reviewed": {"product_id": _STR, "rating": {"type": "integer", "maximum": 5}},
}


def build_plan() -> CompiledPlan:
    plan = load_plan(EXAMPLE)
    schemas = {s.subject: (s.schema, "1-0-0") for s in plan.subjects.values()}
    for name, props in EXTRA_EVENTS.items():
        schema = {
            "type": "object",
            "properties": props,
            "required": list(props)[:1],
            "additionalProperties": False,
        }
        schemas[f"track:{name}"] = (schema, "1-0-0")
    return CompiledPlan(plan.source, Enforcement.BLOCK_VIOLATIONS, schemas)


def build_events(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    shop = simulate(600, seed, datetime(2026, 1, 5, tzinfo=UTC), "bench").events
    context = shop[0]["context"]
    extras = [
        {
            "type": "track",
            "event": "Product Reviewed",
            "properties": {"product_id": "P1", "rating": 4},
        },
        {
            "type": "track",
            "event": "Coupon Applied",
            "properties": {"order_id": "o1", "coupon_id": "SPRING", "discount": 5.0},
        },
        {"type": "track", "event": "Products Searched", "properties": {"query": "tent"}},
    ]
    events = []
    for i in range(count):
        event = dict(shop[i % len(shop)] if i % 10 else extras[i % len(extras)])
        event.setdefault("context", context)
        if rng.random() < 0.02 and event["type"] == "track":
            event["properties"] = {**event.get("properties", {}), "unplanned_field": True}
        events.append(event)
    return events


def rate(
    fn: Callable[[dict[str, Any]], object], events: list[dict[str, Any]], rounds: int
) -> float:
    best = 0.0
    for _ in range(rounds):
        start = time.process_time()
        for event in events:
            fn(event)
        best = max(best, len(events) / (time.process_time() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plan = build_plan()
    events = build_events(args.events)
    invalid = sum(1 for e in events if plan.validate(e))
    print(f"plan: {len(plan.subjects)} subjects; events: {len(events):,} ({invalid:,} invalid)")
    validate = rate(plan.validate, events, args.rounds)
    enforce = rate(plan.enforce, events, args.rounds)
    verdict = "meets" if validate >= TARGET else "MISSES"
    print(f"validate: {validate:,.0f} events/s per core ({verdict} the {TARGET:,} target)")
    print(f"enforce (block_violations): {enforce:,.0f} events/s per core")


if __name__ == "__main__":
    main()
