"""The serving-store contract's privacy deletions (``delete_history``, ``delete_separations``)
and what ``delete_profile`` leaves behind, run against every backend in ``conftest.BACKENDS``."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from clew.store import ProfileStore, Provenance, Separation, StoredEvent

OpenStore = Callable[[], ProfileStore]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def prov(time_ms: int = 1_000) -> Provenance:
    return Provenance("m1", "web", time_ms)


def with_history(store: ProfileStore, times: list[int]) -> tuple[str, str]:
    """A profile with one event per time (oldest first) and an id merged into it."""
    pid, old = unique("p"), unique("old")
    store.attach(pid, "user_id", unique("u"), prov())
    store.attach(old, "anonymous_id", unique("a"), prov())
    for i, t in enumerate(times):
        store.add_event(pid, StoredEvent(0, f"e{i}", t, b'{"n":%d}' % i))
    store.merge(pid, old, prov(2_000))
    return pid, old


def test_delete_history_removes_only_the_events_in_the_range(store: ProfileStore) -> None:
    pid, _ = with_history(store, [100, 200, 300, 400, 500])
    other, _ = with_history(store, [100, 200, 300])

    assert store.delete_history(pid, 200, 400) == 2, "since is inclusive, until exclusive"
    assert [e.message_id for e in store.events(pid, 10)] == ["e4", "e3", "e0"]
    assert store.get(pid) is not None, "the profile stays"
    assert len(store.events(other, 10)) == 3, "another profile's history is untouched"


def test_delete_history_bounds_are_optional_and_old_ids_resolve(store: ProfileStore) -> None:
    pid, old = with_history(store, [100, 200, 300, 400])

    assert store.delete_history(old, until_ms=200) == 1, "a merged-away id acts on the survivor"
    assert store.delete_history(pid, since_ms=400) == 1
    assert [e.time_ms for e in store.events(pid, 10)] == [300, 200]
    assert store.delete_history(pid) == 2
    assert store.events(pid, 10) == []
    assert store.delete_history(unique("nobody")) == 0


def test_delete_history_survives_a_reopen(open_store: OpenStore) -> None:
    store = open_store()
    pid, _ = with_history(store, [100, 200])
    store.delete_history(pid, 150, None)
    store.close()
    assert [e.time_ms for e in open_store().events(pid, 10)] == [100]


def test_delete_separations_removes_those_naming_an_identity(store: ProfileStore) -> None:
    ada, bob, cy = (("email", unique(n) + "@x.test") for n in ("ada", "bob", "cy"))
    store.add_separation(Separation(ada, bob, prov()))
    store.add_separation(Separation(cy, ada, prov()))
    store.add_separation(Separation(bob, cy, prov()))

    assert store.delete_separations([ada, ("email", unique("never"))]) == 2
    assert [(s.a, s.b) for s in store.separations()] == [(bob, cy)]
    assert store.delete_separations([ada]) == 0


def test_delete_profile_leaves_no_identity_history_timer_or_redirect(store: ProfileStore) -> None:
    pid, old = with_history(store, [100, 200])
    store.set_timers({pid: 5_000, old: 6_000})
    ids = [(e.id_type, e.value) for e in store.get(pid).identities]  # type: ignore[union-attr]

    assert store.delete_profile(old)
    assert store.get(pid) is None and store.resolve(old) is None
    assert all(store.lookup(t, v) is None for t, v in ids)
    assert store.events(pid, 10) == [] and store.due_timers(10**15) == []
