"""The resolver's planner keeps running tallies of what the rules count (identifiers per type
within their windows, identifiers, merges) instead of recounting every accepted profile for
each candidate identifier. A property test holds it to the recounting planner it replaced
(restated here as it was), under tight rules where limits, caps and windows decide often:
every event's resolution and the final profiles must be the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clew.events import Event, format_time
from clew.identity import Identifier, IdentityResolver, IdentityRules
from clew.identity.identifiers import Dropped
from clew.identity.resolver import _duration, _Plan
from clew.identity.rules import IdTypeRule
from clew.store import MemoryProfileStore, Profile

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = 86_400


class RecountingResolver(IdentityResolver):
    """The planner before the running tallies: every candidate recounts the whole plan."""

    def _plan(
        self,
        candidates: Sequence[Identifier],
        time_ms: int,
        link: Identifier | None = None,
        owners: Sequence[str | None] | None = None,
    ) -> _Plan:
        plan = _Plan({}, [], [])
        for k, ident in enumerate(candidates):
            if owners is not None:
                owner = owners[k]
            else:
                owner = self._store.lookup(ident.id_type, ident.value)
            if owner is not None and owner in plan.profiles:
                continue
            if owner is None and ident == link:
                continue
            joining = self._store.get(owner) if owner is not None else None
            reason = self._recount(plan, ident, joining, time_ms)
            if reason is not None:
                plan.dropped.append(Dropped(ident.id_type, ident.value, reason))
            elif joining is not None:
                plan.profiles[joining.profile_id] = joining
            else:
                plan.new.append(ident)
        return plan

    def _recount(
        self, plan: _Plan, ident: Identifier, joining: Profile | None, time_ms: int
    ) -> str | None:
        if self._apart:
            reason = self._separated(plan, ident, joining)
            if reason is not None:
                return reason
        if joining is None:
            added = self._counts((), [ident], time_ms)
            what = f"adding {ident}"
        else:
            added = self._counts((joining,), [], time_ms)
            what = f"{ident} belongs to profile {joining.profile_id}; merging it"
        before = self._counts(plan.profiles.values(), plan.new, time_ms) if added else {}
        for id_type, extra in sorted(added.items()):
            rule = self._table.rule(id_type)
            after = before.get(id_type, 0) + extra
            if rule.limit is not None and after > rule.limit:
                window = f" per {_duration(rule.window_s)}" if rule.window_s else ""
                return (
                    f"{what} would give one profile {after} {id_type} "
                    f"identifiers (limit {rule.limit}{window})"
                )
        total_before = sum(len(p.identities) for p in plan.profiles.values()) + len(plan.new)
        total_after = total_before + (len(joining.identities) if joining else 1)
        if total_after > self._rules.max_identifiers_per_profile:
            return (
                f"{what} would give one profile {total_after} identifiers "
                f"(max_identifiers_per_profile {self._rules.max_identifiers_per_profile})"
            )
        if joining is not None and plan.profiles:
            merges = sum(len(p.merged) for p in (*plan.profiles.values(), joining))
            merges += len(plan.profiles)
            if merges > self._rules.max_merges_per_profile:
                return (
                    f"{what} would make {merges} merges into one profile "
                    f"(max_merges_per_profile {self._rules.max_merges_per_profile})"
                )
        return None


def tight_rules() -> IdentityRules:
    return IdentityRules(
        id_types={
            "user_id": IdTypeRule(priority=1, limit=2),
            "email": IdTypeRule(priority=2, limit=2, window_s=DAY),
            "loyalty_id": IdTypeRule(priority=4, limit=1),
            "anonymous_id": IdTypeRule(priority=9, limit=3, window_s=2 * DAY),
        },
        max_identifiers_per_profile=7,
        max_merges_per_profile=2,
    )


def event(n: int, spec: dict[str, Any]) -> Event:
    when = format_time(T0 + timedelta(hours=spec["hour"]))
    traits: dict[str, Any] = {}
    if spec["email"] is not None:
        traits["email"] = f"e{spec['email']}@shop.test"
    context: dict[str, Any] = {}
    if spec["loyalty"] is not None:
        context["externalIds"] = [{"type": "loyalty_id", "id": f"L{spec['loyalty']}"}]
    if spec["alias"]:
        return Event(
            type="alias",
            message_id=f"m{n}",
            timestamp=when,
            received_at=when,
            source_id="web",
            user_id=f"u{spec['user'] or 0}",
            previous_id=f"a{spec['anon'] or 0}",
        )
    return Event(
        type="identify",
        message_id=f"m{n}",
        timestamp=when,
        received_at=when,
        source_id="web",
        user_id=None if spec["user"] is None else f"u{spec['user']}",
        anonymous_id=None if spec["anon"] is None else f"a{spec['anon']}",
        traits=traits,
        context=context,
    )


small = st.none() | st.integers(0, 5)
# Few user ids, many devices and emails: profiles merge often, so the merge cap and the
# per-type limits see plans of several profiles.
specs = st.fixed_dictionaries(
    {
        "hour": st.integers(0, 24 * 5),
        "user": st.none() | st.none() | st.integers(0, 3),
        "anon": small,
        "email": small,
        "loyalty": st.none() | st.integers(0, 2),
        "alias": st.booleans(),
    }
)


def profiles(store: MemoryProfileStore) -> list[Profile]:
    return store.scan(None, 10_000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(specs, min_size=20, max_size=40))
def test_running_tallies_decide_as_recounting_did(batch: list[dict[str, Any]]) -> None:
    rules = tight_rules()
    fast_store, slow_store = MemoryProfileStore(), MemoryProfileStore()
    fast = IdentityResolver(fast_store, rules)
    slow = RecountingResolver(slow_store, rules)
    for n, spec in enumerate(batch):
        ev = event(n, spec)
        assert fast.resolve(ev) == slow.resolve(ev)
    assert profiles(fast_store) == profiles(slow_store)


def test_the_tallies_refuse_what_a_recount_refuses() -> None:
    """A third email within the day is refused; one outside the window is taken."""
    rules = tight_rules()
    store = MemoryProfileStore()
    resolver = IdentityResolver(store, rules)
    for n, (hour, email) in enumerate([(0, 1), (1, 2), (2, 3), (30, 4)]):
        spec = {"hour": hour, "user": 1, "anon": None, "email": email, "loyalty": None}
        resolution = resolver.resolve(event(n, {**spec, "alias": False}))
        if email == 3:
            assert [d.value for d in resolution.refused] == ["e3@shop.test"]
        else:
            assert resolution.refused == ()
