"""Profile traits and purchase totals: how an event's traits update a profile, and how two
profiles' values combine when they merge. The policy (:class:`TraitPolicy`, the
``[identity.traits]`` settings) is defined in :mod:`clew.config.identity`.

Traits come from ``identify`` events. Each field has a strategy: ``latest`` (default; the value
with the latest event time wins, so a late event never overwrites a newer value), ``first``
(the earliest event time wins), ``sum`` (numbers add up) or ``union`` (lists and scalars
collect distinct values). The event time of each field's value is kept in the profile's
computed values under ``_trait_times``, so a merge, a split and the batch rebuild all pick the
same winner.

Purchase totals are derived from ``Order Completed`` events (any spelling that lowercases,
with ``_`` read as a space, to ``order completed``): ``total_lifetime_value`` sums each
order's ``properties.revenue`` (a number, or a numeric string; ``properties.total`` when
there is no revenue), ``orders_count`` counts orders, ``last_purchase_date`` is the latest
order's event time.
"""

from __future__ import annotations

import math
from typing import Any

from clew.config.identity import Strategy as Strategy
from clew.config.identity import TraitPolicy as TraitPolicy
from clew.nesting import bounded_sum
from clew.store.base import Traits

TRAIT_TIMES = "_trait_times"
LIFETIME_VALUE = "total_lifetime_value"
ORDERS_COUNT = "orders_count"
LAST_PURCHASE = "last_purchase_date"
ORDER_EVENT = "order completed"
CONTESTED = "_contested"
"""Computed key of a profile a rule refused an identifier for, or that owned one: the sorted
identifiers (``type:value``) of every event in which that happened, the links along which
its identity may depend on the order events arrive in (see :mod:`clew.identity.repair`)."""
MAX_CONTESTED_LINKS = 1000
TOO_MANY_LINKS = "*"
"""The last entry of a :data:`CONTESTED` list cut at :data:`MAX_CONTESTED_LINKS`."""
ORDER_AMOUNTS = ("revenue", "total")
"""The ``properties`` members an order's amount is read from, the first usable one wins."""


def is_order(event_type: str, event_name: str | None) -> bool:
    """Whether the event is an order (``Order Completed`` in any usual spelling)."""
    return (
        event_type == "track"
        and event_name is not None
        and event_name.strip().lower().replace("_", " ") == ORDER_EVENT
    )


def revenue(properties: dict[str, Any]) -> float:
    """The order's revenue: ``revenue``, else ``total``; 0 when neither is a finite number.

    >>> revenue({"revenue": "19.90"}), revenue({"total": 5}), revenue({"revenue": True})
    (19.9, 5.0, 0.0)
    """
    for key in ORDER_AMOUNTS:
        value = properties.get(key)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int | float | str):
            try:
                number = float(value)
            except (ValueError, OverflowError):  # OverflowError: an integer beyond 1e308
                continue
            if math.isfinite(number):
                return number
    return 0.0


def _union(current: Any, incoming: Any) -> list[Any]:
    out = list(current) if isinstance(current, list) else ([] if current is None else [current])
    for item in incoming if isinstance(incoming, list) else [incoming]:
        if item not in out:
            out.append(item)
    return out


def _add(current: Any, incoming: Any) -> Any:
    if isinstance(incoming, bool) or not isinstance(incoming, int | float):
        return current
    if isinstance(current, bool) or not isinstance(current, int | float):
        return incoming
    return bounded_sum(current, incoming)


def _wins(strategy: Strategy, time_ms: int, held_ms: int | None) -> bool:
    if held_ms is None:
        return True
    return time_ms >= held_ms if strategy == "latest" else time_ms < held_ms


class TraitMerger:
    """Applies a :class:`TraitPolicy`; built once and shared."""

    def __init__(self, policy: TraitPolicy | None = None) -> None:
        self.policy = policy if policy is not None else TraitPolicy()

    def times(self, computed: Traits, incoming: Traits, time_ms: int) -> tuple[Traits, list[str]]:
        """``computed`` with the trait times an event at ``time_ms`` wins, and the names of
        the ``latest``/``first`` fields whose incoming value wins. Pure."""
        times: dict[str, int] = dict(computed.get(TRAIT_TIMES, {}))
        winners: list[str] = []
        for name in incoming:
            strategy = self.policy.strategy(name)
            if strategy in ("latest", "first") and _wins(strategy, time_ms, times.get(name)):
                times[name] = time_ms
                winners.append(name)
        return {**computed, TRAIT_TIMES: times}, winners

    def values(self, traits: Traits, incoming: Traits, winners: list[str]) -> Traits:
        """``traits`` updated by an event's traits: the ``winners`` from :meth:`times` take
        the incoming value, ``sum`` fields add up and ``union`` fields collect. Pure."""
        out = dict(traits)
        for name, value in incoming.items():
            strategy = self.policy.strategy(name)
            if strategy == "sum":
                out[name] = _add(out.get(name), value)
            elif strategy == "union":
                out[name] = _union(out.get(name), value)
        for name in winners:
            out[name] = incoming[name]
        return out

    def merge_traits(
        self, into: Traits, from_: Traits, into_times: Traits, from_times: Traits
    ) -> Traits:
        out = dict(into)
        for name, value in from_.items():
            strategy = self.policy.strategy(name)
            if name not in out:
                out[name] = value
            elif strategy == "sum":
                out[name] = _add(out[name], value)
            elif strategy == "union":
                out[name] = _union(out[name], value)
            elif _wins(strategy, from_times.get(name, 0), into_times.get(name)) and (
                from_times.get(name, 0) != into_times.get(name)
            ):
                out[name] = value
        return out

    def merge_computed(self, into: Traits, from_: Traits) -> Traits:
        """Combine two profiles' computed values: purchase totals add up, the later purchase
        date wins, each trait keeps the time of the value that won; other keys: the
        surviving profile's."""
        out = {**from_, **into}
        out[LIFETIME_VALUE] = into.get(LIFETIME_VALUE, 0.0) + from_.get(LIFETIME_VALUE, 0.0)
        out[ORDERS_COUNT] = into.get(ORDERS_COUNT, 0) + from_.get(ORDERS_COUNT, 0)
        dates = [d for d in (into.get(LAST_PURCHASE), from_.get(LAST_PURCHASE)) if d]
        out[LAST_PURCHASE] = max(dates) if dates else None
        into_t: dict[str, int] = into.get(TRAIT_TIMES, {})
        from_t: dict[str, int] = from_.get(TRAIT_TIMES, {})
        times = dict(into_t)
        for name, t in from_t.items():
            strategy = self.policy.strategy(name)
            if (
                name not in times
                or (strategy == "latest" and t > times[name])
                or (strategy == "first" and t < times[name])
            ):
                times[name] = t
        out[TRAIT_TIMES] = times
        if CONTESTED in into or CONTESTED in from_:
            links = sorted({*into.get(CONTESTED, ()), *from_.get(CONTESTED, ())})
            if len(links) > MAX_CONTESTED_LINKS:
                links = [*links[: MAX_CONTESTED_LINKS - 1], TOO_MANY_LINKS]
            out[CONTESTED] = links
        return out

    def add_order(self, computed: Traits, amount: float, when: str) -> Traits:
        """``computed`` with one more order of ``amount`` at ISO time ``when``."""
        last = computed.get(LAST_PURCHASE)
        return {
            **computed,
            LIFETIME_VALUE: computed.get(LIFETIME_VALUE, 0.0) + amount,
            ORDERS_COUNT: computed.get(ORDERS_COUNT, 0) + 1,
            LAST_PURCHASE: when if last is None or when > last else last,
        }
