"""The serving-store contract is one protocol per concern (``clew.store.base``), and
``ProfileStore`` is their combination: every operation belongs to exactly one concern, and
every backend is a ``ProfileStore`` (so it can stand wherever a concern is asked for)."""

from __future__ import annotations

import pytest

from clew.store import MemoryProfileStore, SQLiteProfileStore, base

CONCERNS: dict[type, set[str]] = {
    base.ProfileReader: {"lookup", "resolve", "get"},
    base.GraphStore: {"touch", "attach", "detach", "merge", "delete_profile"},
    base.TraitStore: {"update_traits", "update_computed"},
    base.HistoryStore: {"add_event", "events", "delete_history"},
    base.BulkStore: {"scan", "load", "put_profile", "write_back"},
    base.SeparationStore: {"add_separation", "separations", "delete_separations"},
    base.TimerStore: {"set_timers", "due_timers", "next_timer"},
    base.OutboxStore: {"outbox_put", "outbox_pending", "outbox_ack"},
    base.OffsetStore: {"load_offsets", "save_offsets"},
}
# What the combination adds to its concerns.
OWN = {"transaction", "close"}


@pytest.mark.parametrize("concern", list(CONCERNS), ids=lambda c: c.__name__)
def test_each_concern_declares_its_operations(concern: type) -> None:
    own = {
        name
        for name, value in vars(concern).items()
        if getattr(value, "__isabstractmethod__", False)
    }
    assert own == CONCERNS[concern]
    assert concern in base.ProfileStore.__mro__


def test_the_store_is_its_concerns_and_nothing_else() -> None:
    declared = [name for names in CONCERNS.values() for name in names]
    assert len(declared) == len(set(declared)) == 28
    assert base.ProfileStore.__abstractmethods__ == frozenset(declared) | OWN


def test_every_backend_is_a_profile_store() -> None:
    assert issubclass(SQLiteProfileStore, base.ProfileStore)
    assert issubclass(MemoryProfileStore, base.ProfileStore)
    from clew.store import RedisProfileStore

    assert issubclass(RedisProfileStore, base.ProfileStore)
