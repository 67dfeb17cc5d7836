"""Computed traits and audience memberships in ``clew rebuild``: the profiles stage's audience
engine run over the lake's events after identity resolution, and the speed layer's values
read back for the comparison.

Batch side: each event of a type some definition reads that ended in a profile (the rebuild's
event-to-profile mapping) is folded, in event-time order, into its profile's engine state with
:meth:`Engine.observe`, if :meth:`Engine.relevant`; then :meth:`Engine.evaluate` runs once
per profile at one time ``now_ms``, over the profile's re-derived traits and computed values
with its purchase totals from SQL (a condition may read ``orders_count``). Engine states do
not depend on the order events are folded in, and merging two profiles' states equals folding
both profiles' events into one, so folding each final profile's events once gives what the
speed layer's folds and merges give.

Speed side: a profile's stored values are those of its last evaluation (its last batch or
timer). Until its timer is due they are what an evaluation now would give, since only events
and timers change them; once it is due (a window moved or a funnel matured, and the stage has
not fired the timer yet) they are stale by design, and the profile is evaluated again at
``now_ms`` from its stored state instead. A stored value that differs from the batch's while
no timer is due is therefore a real difference, even if the stored engine state agrees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clew.audiences.engine import AUDIENCES, STATE, Engine
from clew.batch._lake_events import row_to_event
from clew.batch._reconcile import Computed
from clew.events import format_time
from clew.identity.traits import LAST_PURCHASE, LIFETIME_VALUE, ORDERS_COUNT
from clew.store.base import Profile, ProfileStore, Traits

if TYPE_CHECKING:
    import pyarrow as pa

# The event time's column in a row of ENGINE_EVENTS, after the profile id.
_TIME = 9
# due_timers() has no paging: one call with a limit above any profile count.
_ALL_TIMERS = 1 << 40


def fold(engine: Engine, batches: Iterable[pa.RecordBatch]) -> dict[str, Traits]:
    """Per profile, computed values holding only its engine state, from ``batches`` of
    :data:`clew.batch._rebuild_sql.ENGINE_EVENTS` rows (profile id, then the columns
    :func:`row_to_event` reads). Profiles with no matching event are absent."""
    states: dict[str, Traits] = {}
    empty: Traits = {}
    for batch in batches:
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for pid, *row in zip(*columns, strict=True):
            event = row_to_event(tuple(row))
            if not engine.relevant(event):
                continue
            current = states.get(pid, empty)
            states[pid] = engine.observe(current, event, row[_TIME]) or current
    return states


def public(engine: Engine, computed: Traits) -> Computed:
    """The public computed traits and memberships held in ``computed``."""
    return Computed(
        {name: computed.get(name) for name in engine.trait_names},
        tuple(computed.get(AUDIENCES) or ()),
    )


def evaluate_rebuilt(
    engine: Engine, profile: Profile, row: Mapping[str, Any], state: Traits, now_ms: int
) -> Computed:
    """The computed traits and memberships at ``now_ms`` of a re-derived ``profile``, its
    ``customer_profiles`` ``row`` (purchase totals) and engine ``state`` (from :func:`fold`).
    The purchase totals are put where the speed layer keeps them, only once there is an
    order, as it does."""
    computed = dict(profile.computed)
    if row["orders_count"]:
        computed[LIFETIME_VALUE] = row["total_lifetime_value"]
        computed[ORDERS_COUNT] = row["orders_count"]
        computed[LAST_PURCHASE] = format_time(row["last_purchase_date"])
    if STATE in state:
        computed[STATE] = state[STATE]
    return public(engine, engine.evaluate(profile.traits, computed, now_ms).computed)


@dataclass(slots=True)
class ServingComputed:
    """The speed layer's computed traits and memberships of a serving profile, as of
    ``now_ms`` (see the module docstring): the stored ones, or, for a profile whose timer is
    due by then, those of an evaluation at ``now_ms``."""

    engine: Engine
    now_ms: int
    due: frozenset[str]

    @classmethod
    def of(cls, engine: Engine, store: ProfileStore, now_ms: int) -> ServingComputed:
        """Reads which profiles' timers are due at ``now_ms`` (the store's timers are kept
        in the profiles stage's clock, which ``now_ms`` must come from)."""
        due = frozenset(pid for pid, _ in store.due_timers(now_ms, _ALL_TIMERS))
        return cls(engine, now_ms, due)

    def __call__(self, profile: Profile) -> Computed:
        computed = profile.computed
        if profile.profile_id in self.due:
            computed = self.engine.evaluate(profile.traits, computed, self.now_ms).computed
        return public(self.engine, computed)
