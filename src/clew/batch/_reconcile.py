"""Reconciliation of the batch layer (``clew rebuild``) with the speed layer (the serving
store): the same people (identifiers grouped into profiles the same way), under the same
profile ids, with the same seen times, purchase totals, traits and consent, and, when
audience definitions exist, the same computed traits and audience memberships."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clew.events import parse_time
from clew.identity.consent import CONSENT
from clew.identity.traits import LAST_PURCHASE, LIFETIME_VALUE, ORDERS_COUNT
from clew.store.base import Profile, ProfileStore

LTV_TOLERANCE = 1e-6
_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

Ident = tuple[str, str]


def _ms(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // _ONE_MS


@dataclass(slots=True, frozen=True)
class Computed:
    """A profile's public computed traits (by name) and audience memberships (sorted), as
    the audience engine evaluates them at one point in time."""

    traits: dict[str, Any]
    audiences: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class Facts:
    """What both layers must agree on for one profile."""

    profile_id: str
    identifiers: frozenset[Ident]
    first_seen_ms: int
    last_seen_ms: int
    lifetime_value: float
    orders: int
    last_purchase_ms: int | None
    traits: dict[str, Any]
    # The current consent state; ``None`` when this side does not carry it, and then it is
    # not compared.
    consent: dict[str, Any] | None = None
    # Computed traits and memberships; ``None`` when not compared (no definitions, or the
    # Spark rebuild's rows).
    computed: Computed | None = None

    @classmethod
    def from_row(
        cls, row: dict[str, Any], profile: Profile, computed: Computed | None = None
    ) -> Facts:
        """From a ``customer_profiles`` row built by the rebuild and the re-derived profile."""
        return cls(
            row["profile_id"],
            frozenset((e.id_type, e.value) for e in profile.identities),
            _ms(row["first_seen"]) or 0,
            _ms(row["last_seen"]) or 0,
            row["total_lifetime_value"],
            row["orders_count"],
            _ms(row["last_purchase_date"]),
            profile.traits,
            profile.computed.get(CONSENT, {}),
            computed,
        )

    @classmethod
    def from_serving(cls, profile: Profile, computed: Computed | None = None) -> Facts:
        """From a profile of the serving store (purchase totals in its computed values)."""
        c = profile.computed
        last = c.get(LAST_PURCHASE)
        return cls(
            profile.profile_id,
            frozenset((e.id_type, e.value) for e in profile.identities),
            profile.first_seen_ms,
            profile.last_seen_ms,
            float(c.get(LIFETIME_VALUE) or 0.0),
            int(c.get(ORDERS_COUNT) or 0),
            _ms(parse_time(last)) if isinstance(last, str) else None,
            profile.traits,
            c.get(CONSENT, {}),
            computed,
        )


@dataclass(slots=True)
class Reconciliation:
    """The comparison. ``agree`` when every profile matches; ``differences`` lists the first
    ones found (``difference_count`` counts them all)."""

    batch_profiles: int = 0
    speed_profiles: int = 0
    batch_identifiers: int = 0
    speed_identifiers: int = 0
    # Profiles grouping exactly the same identifiers in both layers.
    same_groups: int = 0
    # Of those, profiles with the same id and the same values.
    identical: int = 0
    difference_count: int = 0
    differences: list[str] = field(default_factory=list)
    # Whether computed traits and audience memberships were compared (definitions exist).
    computed: bool = False

    @property
    def agree(self) -> bool:
        return self.difference_count == 0


def scan_all(store: ProfileStore) -> Iterator[Profile]:
    """Every surviving profile of ``store``, in id order."""
    after: str | None = None
    while page := store.scan(after, _PAGE):
        yield from page
        after = page[-1].profile_id


def _name(ids: frozenset[Ident], limit: int = 4) -> str:
    shown = sorted(f"{t}:{v}" for t, v in ids)
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return "{" + ", ".join(shown[:limit]) + more + "}"


def _fields(batch: Facts, speed: Facts) -> list[str]:
    out: list[str] = []
    if batch.profile_id != speed.profile_id:
        out.append(f"profile id {batch.profile_id} (batch) vs {speed.profile_id} (speed)")
    for name in ("first_seen_ms", "last_seen_ms", "orders", "last_purchase_ms"):
        b, s = getattr(batch, name), getattr(speed, name)
        if b != s:
            out.append(f"{name} {b} (batch) vs {s} (speed)")
    if abs(batch.lifetime_value - speed.lifetime_value) > LTV_TOLERANCE:
        out.append(
            f"lifetime value {batch.lifetime_value!r} (batch) vs {speed.lifetime_value!r} (speed)"
        )
    if batch.traits != speed.traits:
        keys = sorted(
            k
            for k in batch.traits.keys() | speed.traits.keys()
            if batch.traits.get(k) != speed.traits.get(k)
        )
        out.append(f"traits differ in {', '.join(keys)}")
    if batch.consent is not None and speed.consent is not None and batch.consent != speed.consent:
        out.append(f"consent {batch.consent} (batch) vs {speed.consent} (speed)")
    if batch.computed is not None and speed.computed is not None:
        out += _computed(batch.computed, speed.computed)
    return out


def _same_value(a: Any, b: Any) -> bool:
    """Equal, or floats within :data:`LTV_TOLERANCE`: a sum or average depends on the order
    its numbers were added in, which differs between the layers."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= LTV_TOLERANCE
    return bool(a == b)


def _computed(batch: Computed, speed: Computed) -> list[str]:
    out = [
        f"computed trait {name} {batch.traits.get(name)!r} (batch) vs "
        f"{speed.traits.get(name)!r} (speed)"
        for name in sorted(batch.traits.keys() | speed.traits.keys())
        if not _same_value(batch.traits.get(name), speed.traits.get(name))
    ]
    b, s = set(batch.audiences), set(speed.audiences)
    out += [f"audience {name}: member in the batch layer only" for name in sorted(b - s)]
    out += [f"audience {name}: member in the speed layer only" for name in sorted(s - b)]
    return out


def reconcile(
    batch: list[Facts],
    store: ProfileStore,
    max_differences: int,
    computed: Callable[[Profile], Computed] | None = None,
) -> Reconciliation:
    """Compare the rebuilt profiles with every profile of the serving store ``store``;
    ``computed`` gives a serving profile's computed traits and memberships, to compare with
    the batch's (both sides must carry them)."""
    speed = [
        Facts.from_serving(p, None if computed is None else computed(p)) for p in scan_all(store)
    ]
    report = Reconciliation(
        batch_profiles=len(batch),
        speed_profiles=len(speed),
        batch_identifiers=sum(len(p.identifiers) for p in batch),
        speed_identifiers=sum(len(p.identifiers) for p in speed),
        computed=computed is not None,
    )

    def differ(text: str) -> None:
        report.difference_count += 1
        if len(report.differences) < max_differences:
            report.differences.append(text)

    # Profiles are matched by the exact set of identifiers they hold (by id when they hold
    # none): the identifiers are partitioned the same way iff every group has a match.
    def key(p: Facts) -> frozenset[Ident] | str:
        return p.identifiers or p.profile_id

    by_batch = {key(p): p for p in batch}
    by_speed = {key(p): p for p in speed}
    owner_speed = {i: p for p in speed for i in p.identifiers}
    for k in sorted(by_batch.keys() - by_speed.keys(), key=lambda k: by_batch[k].profile_id):
        b = by_batch[k]
        if not b.identifiers:
            differ(f"profile {b.profile_id} (no identifiers) is not in the speed layer")
            continue
        held = {owner_speed[i].profile_id for i in b.identifiers if i in owner_speed}
        missing = sorted(f"{t}:{v}" for t, v in b.identifiers if (t, v) not in owner_speed)
        where = f"in speed profiles {', '.join(sorted(held))}" if held else ""
        if missing:
            where += f"{'; ' if where else ''}unknown to the speed layer: {', '.join(missing)}"
        differ(f"batch profile {b.profile_id} {_name(b.identifiers)} is split differently: {where}")
    owner_batch = {i: p for p in batch for i in p.identifiers}
    for k in sorted(by_speed.keys() - by_batch.keys(), key=lambda k: by_speed[k].profile_id):
        s = by_speed[k]
        if not s.identifiers:
            differ(f"speed profile {s.profile_id} (no identifiers) is not in the batch layer")
            continue
        held = {owner_batch[i].profile_id for i in s.identifiers if i in owner_batch}
        differ(
            f"speed profile {s.profile_id} {_name(s.identifiers)} is grouped differently in "
            f"the batch layer (profiles {', '.join(sorted(held)) or 'none'})"
        )
    for k in sorted(by_batch.keys() & by_speed.keys(), key=lambda k: by_speed[k].profile_id):
        report.same_groups += 1
        problems = _fields(by_batch[k], by_speed[k])
        if not problems:
            report.identical += 1
        for problem in problems:
            differ(f"profile {by_speed[k].profile_id} {_name(by_speed[k].identifiers)}: {problem}")
    return report
