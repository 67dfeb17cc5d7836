"""The serving-store contract's batch and history methods (``transaction``, offsets, computed
values, event history, ``scan``, ``put_profile``, separations, match weights), run against
every backend in ``conftest.BACKENDS``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

import pytest

from clew.store import (
    IdentityEdge,
    MemoryProfileStore,
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    Separation,
    StoreClosedError,
    StoredEvent,
    StoreError,
    Traits,
    UnknownProfileError,
)

OpenStore = Callable[[], ProfileStore]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def prov(time_ms: int = 1_000, message_id: str = "m1", source_id: str = "web") -> Provenance:
    return Provenance(message_id, source_id, time_ms)


def event(message_id: str, time_ms: int = 1_000) -> StoredEvent:
    # The seq given is ignored by the store; 0 makes that visible in the assertions.
    return StoredEvent(0, message_id, time_ms, b'{"messageId": "%s"}' % message_id.encode())


def names(events: Sequence[StoredEvent]) -> list[str]:
    return [e.message_id for e in events]


class Crash(Exception):
    """Raised by a test to abort a transaction block."""


# -- transaction ----------------------------------------------------------------------------


def test_a_block_that_raises_leaves_nothing(open_store: OpenStore) -> None:
    store = open_store()
    a, b, doomed, newcomer = unique("a"), unique("b"), unique("doomed"), unique("new")
    va, vb, vnew = unique("anon"), unique("e"), unique("u")
    store.attach(a, "anonymous_id", va, prov(1_000, "m1"))
    store.add_event(a, event("a1"))
    store.attach(b, "email", vb, prov(2_000, "m2"))
    store.add_event(b, event("b1"))
    store.touch(doomed, 1)
    store.save_offsets("identity", {("events", 0): 10})
    before = {pid: store.get(pid) for pid in (a, b, doomed)}
    history_before = {pid: store.events(pid, 10) for pid in (a, b)}
    separation = Separation(("anonymous_id", va), ("email", vb), prov())

    with pytest.raises(Crash), store.transaction():
        assert store.attach(a, "user_id", vnew, prov(3_000, "m3")) == a
        store.add_event(a, event("a2"))
        assert store.merge(a, b, prov(3_000, "m3")) == a
        store.update_traits(a, lambda t: {**t, "plan": "pro"})
        store.update_computed(a, lambda c: {**c, "orders": 1})
        store.put_profile(Profile(newcomer, 3_000, 3_000), [event("n1")])
        store.add_separation(separation)
        assert store.delete_profile(doomed) is True
        store.save_offsets("identity", {("events", 0): 11})
        # Inside the block, the block's own writes are visible.
        assert store.resolve(b) == a
        assert names(store.events(a, 10)) == ["a2", "b1", "a1"]
        raise Crash

    for handle in (store, open_store()):
        for pid, snapshot in before.items():
            assert handle.get(pid) == snapshot
        for pid, history in history_before.items():
            assert handle.events(pid, 10) == history
        assert handle.lookup("user_id", vnew) is None
        assert handle.lookup("email", vb) == b
        assert handle.get(newcomer) is None
        assert handle.events(newcomer, 10) == []
        assert separation not in handle.separations()
        assert handle.load_offsets("identity") == {("events", 0): 10}
    store.add_event(a, event("a3"))
    assert names(store.events(a, 10)) == ["a3", "a1"], "the handle works after a rollback"


def test_a_block_that_ends_commits_everything(open_store: OpenStore) -> None:
    store = open_store()
    a, b, value = unique("a"), unique("b"), unique("e")
    with store.transaction():
        store.attach(a, "email", value, prov())
        store.touch(b, 1)
        store.add_event(b, event("b1"))
        store.merge(a, b, prov(2_000, "m2"))
        store.update_computed(a, lambda c: {"orders": 1})
        store.save_offsets("identity", {("events", 0): 42})

    reopened = open_store()
    profile = reopened.get(b)
    assert profile is not None
    assert profile.profile_id == a
    assert profile.computed == {"orders": 1}
    assert reopened.lookup("email", value) == a
    assert names(reopened.events(a, 10)) == ["b1"]
    assert reopened.load_offsets("identity") == {("events", 0): 42}


def test_a_nested_block_is_undone_with_the_outer_block(store: ProfileStore) -> None:
    a, b, value = unique("a"), unique("b"), unique("e")
    with pytest.raises(Crash), store.transaction():
        store.touch(a, 1)
        with store.transaction():
            store.attach(b, "email", value, prov())
            store.add_event(b, event("b1"))
        assert store.lookup("email", value) == b
        raise Crash

    assert store.get(a) is None
    assert store.get(b) is None
    assert store.lookup("email", value) is None
    assert store.events(b, 10) == []


def test_a_nested_block_that_raises_undoes_only_itself(store: ProfileStore) -> None:
    a, b, value = unique("a"), unique("b"), unique("e")
    with store.transaction():
        store.touch(a, 1)
        with pytest.raises(Crash), store.transaction():
            store.attach(a, "email", value, prov())
            store.touch(b, 1)
            raise Crash
        store.add_event(a, event("kept"))

    profile = store.get(a)
    assert profile is not None
    assert profile.identities == ()
    assert store.lookup("email", value) is None
    assert store.get(b) is None
    assert names(store.events(a, 10)) == ["kept"]


def test_a_failed_call_inside_a_block_undoes_only_itself(store: ProfileStore) -> None:
    a, ghost, other, owned = unique("a"), unique("ghost"), unique("other"), unique("e")

    def boom(traits: Traits) -> Traits:
        raise ValueError("caller bug")

    with store.transaction():
        store.attach(a, "email", owned, prov())
        store.update_traits(a, lambda t: {"plan": "free"})
        with pytest.raises(ValueError, match="caller bug"):
            store.update_traits(a, boom)
        with pytest.raises(UnknownProfileError):
            store.merge(a, ghost, prov())
        with pytest.raises(StoreError):
            store.put_profile(
                Profile(other, 1, 1, identities=(IdentityEdge("email", owned, prov()),))
            )
        store.add_event(a, event("after"))

    profile = store.get(a)
    assert profile is not None
    assert profile.traits == {"plan": "free"}
    assert names(store.events(a, 10)) == ["after"]
    assert store.get(other) is None
    assert store.get(ghost) is None


def test_other_handles_see_a_block_only_when_it_ends(open_store: OpenStore) -> None:
    writer = open_store()
    if isinstance(writer, MemoryProfileStore):
        pytest.skip(
            "memory handles share one state and one lock: another handle waits for the block "
            "to end instead of reading the last committed state"
        )
    reader = open_store()
    a, value = unique("a"), unique("e")
    writer.touch(a, 1)
    before = writer.get(a)

    with writer.transaction():
        writer.attach(a, "email", value, prov())
        writer.update_traits(a, lambda t: {"plan": "pro"})
        with writer.transaction():
            writer.add_event(a, event("m1"))
            writer.save_offsets("identity", {("events", 0): 7})
        # The inner block has ended, but the outermost decides.
        assert reader.get(a) == before
        assert reader.lookup("email", value) is None
        assert reader.events(a, 10) == []
        assert reader.load_offsets("identity") == {}

    after = reader.get(a)
    assert after is not None
    assert after.traits == {"plan": "pro"}
    assert reader.lookup("email", value) == a
    assert names(reader.events(a, 10)) == ["m1"]
    assert reader.load_offsets("identity") == {("events", 0): 7}


def test_another_handle_never_sees_half_a_block(open_store: OpenStore) -> None:
    writer, reader = open_store(), open_store()
    a, v1, v2 = unique("a"), unique("e"), unique("u")
    writer.touch(a, 1)
    before = writer.get(a)
    seen: list[Profile | None] = []
    reading = threading.Event()

    def read() -> None:
        reading.set()
        seen.append(reader.get(a))

    thread = threading.Thread(target=read)
    with writer.transaction():
        writer.attach(a, "email", v1, prov())
        thread.start()
        assert reading.wait(5)
        time.sleep(0.05)
        writer.attach(a, "user_id", v2, prov())
    thread.join(5)

    assert seen in ([before], [writer.get(a)])


def test_other_threads_writes_are_not_part_of_a_block(store: ProfileStore) -> None:
    a, b = unique("a"), unique("b")
    writing = threading.Event()

    def write() -> None:
        writing.set()
        store.touch(b, 1)

    thread = threading.Thread(target=write)
    with pytest.raises(Crash), store.transaction():
        store.touch(a, 1)
        thread.start()
        assert writing.wait(5)
        time.sleep(0.05)
        raise Crash
    thread.join(5)

    assert store.get(a) is None
    assert store.get(b) is not None, "the other thread's write is not rolled back"


# -- offsets --------------------------------------------------------------------------------


def test_offsets_round_trip_per_group_and_survive_reopen(open_store: OpenStore) -> None:
    store = open_store()
    group, other = unique("identity"), unique("lake")
    assert store.load_offsets(group) == {}
    store.save_offsets(group, {("events", 0): 10, ("events", 1): 3})
    store.save_offsets(group, {("events", 1): 4})
    store.save_offsets(other, {("events", 0): 99})

    expected = {("events", 0): 10, ("events", 1): 4}
    assert store.load_offsets(group) == expected
    store.close()
    reopened = open_store()
    assert reopened.load_offsets(group) == expected
    assert reopened.load_offsets(other) == {("events", 0): 99}


# -- computed values ------------------------------------------------------------------------


def test_update_computed_read_modify_write(open_store: OpenStore) -> None:
    store = open_store()
    a, b = unique("a"), unique("b")
    store.touch(a, 1)
    store.touch(b, 1)
    store.update_traits(a, lambda t: {"name": "Ada"})
    store.merge(a, b, prov())

    assert store.update_computed(a, lambda c: {**c, "orders": 1, "ltv": 9.5}) == {
        "orders": 1,
        "ltv": 9.5,
    }
    assert store.update_computed(b, lambda c: {**c, "orders": c["orders"] + 1}) == {
        "orders": 2,
        "ltv": 9.5,
    }, "an old id acts on the survivor"

    profile = open_store().get(a)
    assert profile is not None
    assert profile.computed == {"orders": 2, "ltv": 9.5}
    assert profile.traits == {"name": "Ada"}, "traits and computed values are apart"


def test_failed_computed_update_changes_nothing(store: ProfileStore) -> None:
    pid, ghost = unique("p"), unique("ghost")
    store.touch(pid, 1)
    store.update_computed(pid, lambda c: {"orders": 1})

    def boom(computed: Traits) -> Traits:
        raise ValueError("caller bug")

    with pytest.raises(ValueError, match="caller bug"):
        store.update_computed(pid, boom)
    with pytest.raises(StoreError):
        store.update_computed(pid, lambda c: ["not", "a", "dict"])  # type: ignore[arg-type,return-value]
    with pytest.raises(UnknownProfileError, match=ghost):
        store.update_computed(ghost, lambda c: {"orders": 1})
    profile = store.get(pid)
    assert profile is not None
    assert profile.computed == {"orders": 1}
    assert store.get(ghost) is None


def test_concurrent_computed_updates_lose_nothing(store: ProfileStore) -> None:
    threads, per_thread = 8, 25
    pid = unique("p")
    store.touch(pid, 1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                store.update_computed(pid, lambda c: {"n": c.get("n", 0) + 1})
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert errors == []
    profile = store.get(pid)
    assert profile is not None
    assert profile.computed == {"n": threads * per_thread}


def test_merge_combines_computed_values(store: ProfileStore) -> None:
    a, b, c, d = unique("a"), unique("b"), unique("c"), unique("d")
    for pid, ltv in ((a, 10), (b, 5), (c, 1), (d, 2)):
        store.touch(pid, 1)
        store.update_computed(pid, lambda v, ltv=ltv: {"ltv": ltv, f"only-{ltv}": True})

    def add_up(into: Traits, from_: Traits) -> Traits:
        return {**into, **from_, "ltv": into["ltv"] + from_["ltv"]}

    store.merge(a, b, prov(), computed=add_up)
    store.merge(c, d, prov())

    summed = store.get(b)
    assert summed is not None
    assert summed.computed == {"ltv": 15, "only-10": True, "only-5": True}
    kept = store.get(d)
    assert kept is not None
    assert kept.computed == {"ltv": 1, "only-1": True, "only-2": True}, "survivor wins by default"


def test_merge_whose_computed_function_fails_changes_nothing(store: ProfileStore) -> None:
    a, b, value = unique("a"), unique("b"), unique("v")
    store.touch(a, 1)
    store.attach(b, "anonymous_id", value, prov())
    store.update_computed(b, lambda c: {"ltv": 5})
    store.add_event(b, event("b1"))

    def boom(into: Traits, from_: Traits) -> Traits:
        raise ValueError("caller bug")

    with pytest.raises(ValueError, match="caller bug"):
        store.merge(a, b, prov(), computed=boom)
    assert store.resolve(b) == b
    assert store.lookup("anonymous_id", value) == b
    profile = store.get(b)
    assert profile is not None
    assert profile.computed == {"ltv": 5}
    assert names(store.events(b, 10)) == ["b1"]
    assert store.events(a, 10) == []


# -- event history --------------------------------------------------------------------------


def test_events_are_newest_first_and_page_with_before(store: ProfileStore) -> None:
    pid = unique("p")
    store.touch(pid, 1)
    for i in range(1, 6):
        store.add_event(pid, event(f"e{i}", time_ms=i * 1_000))

    everything = store.events(pid, 10)
    assert names(everything) == ["e5", "e4", "e3", "e2", "e1"]
    seqs = [e.seq for e in everything]
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 5, "the store assigns each event its own seq"
    assert everything[0] == StoredEvent(seqs[0], "e5", 5_000, b'{"messageId": "e5"}')

    pages, before = [], None
    while page := store.events(pid, 2, before=before):
        pages.append(names(page))
        before = page[-1].seq
    assert pages == [["e5", "e4"], ["e3", "e2"], ["e1"]]


def test_history_keeps_only_the_newest_events(open_store: OpenStore) -> None:
    store = open_store()
    store.history = 3
    pid = unique("p")
    store.touch(pid, 1)
    for i in range(1, 6):
        store.add_event(pid, event(f"e{i}"))

    assert names(store.events(pid, 10)) == ["e5", "e4", "e3"]
    oldest_kept = store.events(pid, 10)[-1].seq
    assert store.events(pid, 10, before=oldest_kept) == []
    assert names(open_store().events(pid, 10)) == ["e5", "e4", "e3"]


def test_events_of_unknown_profiles(store: ProfileStore) -> None:
    ghost = unique("ghost")
    assert store.events(ghost, 10) == []
    with pytest.raises(UnknownProfileError, match=ghost):
        store.add_event(ghost, event("m1"))
    assert store.get(ghost) is None
    assert store.events(ghost, 10) == []


def test_merge_combines_histories_newest_first_and_trims(store: ProfileStore) -> None:
    store.history = 3
    a, b, c = unique("a"), unique("b"), unique("c")
    for pid in (a, b, c):
        store.touch(pid, 1)
    for pid, name in ((a, "a1"), (b, "b1"), (a, "a2"), (c, "c1"), (b, "b2")):
        store.add_event(pid, event(name))

    store.merge(a, b, prov())

    assert names(store.events(a, 10)) == ["b2", "a2", "b1"]
    assert names(store.events(b, 10)) == ["b2", "a2", "b1"], "an old id reads the survivor"
    assert names(store.events(c, 10)) == ["c1"]
    store.add_event(b, event("a3"))
    assert names(store.events(a, 10)) == ["a3", "b2", "a2"]


# -- scan -----------------------------------------------------------------------------------


def test_scan_pages_through_every_surviving_profile(store: ProfileStore) -> None:
    pids = [unique("p") for _ in range(8)]
    for pid in pids:
        store.attach(pid, "anonymous_id", unique("v"), prov())
    store.merge(pids[0], pids[1], prov())
    store.merge(pids[2], pids[0], prov())
    store.delete_profile(pids[3])
    survivors, gone = {pids[2], *pids[4:]}, {pids[0], pids[1], pids[3]}

    seen: list[Profile] = []
    after: str | None = None
    while page := store.scan(after, 2):
        assert len(page) <= 2
        seen.extend(page)
        after = page[-1].profile_id
    ids = [p.profile_id for p in seen]

    assert ids == sorted(set(ids)), "in id order, each profile once"
    assert survivors <= set(ids)
    assert not gone & set(ids), "merged-away and deleted ids are not profiles"
    merged = next(p for p in seen if p.profile_id == pids[2])
    assert merged == store.get(pids[2])
    assert len(merged.identities) == 3
    assert store.scan(ids[-1], 2) == []


# -- put_profile ----------------------------------------------------------------------------


def test_put_profile_writes_a_whole_profile(open_store: OpenStore) -> None:
    store = open_store()
    pid, old, older = unique("p"), unique("old"), unique("older")
    anon, email = unique("anon"), unique("e")
    profile = Profile(
        pid,
        1_000,
        9_000,
        identities=(
            IdentityEdge("anonymous_id", anon, prov(1_000, "m1")),
            IdentityEdge("email", email, Provenance("m2", "crm", 2_000, 12.5)),
        ),
        traits={"name": "Ada"},
        merged=(
            Redirect(old, pid, prov(3_000, "m3")),
            Redirect(older, old, Provenance("m4", "crm", 4_000, 7.0)),
        ),
        computed={"orders": 3},
    )
    store.put_profile(profile, [event("e1"), event("e2"), event("e3")])

    for handle in (store, open_store()):
        assert handle.get(pid) == profile
        assert handle.lookup("email", email) == pid
        assert handle.lookup("anonymous_id", anon) == pid
        for old_id in (old, older):
            assert handle.resolve(old_id) == pid
            assert handle.get(old_id) == profile
        assert names(handle.events(older, 10)) == ["e3", "e2", "e1"]


def test_put_profile_replaces_the_profile_of_that_id(store: ProfileStore) -> None:
    pid, absorbed, other = unique("p"), unique("absorbed"), unique("other")
    kept, dropped, absorbed_value = unique("e"), unique("anon"), unique("device")
    store.attach(pid, "email", kept, prov())
    store.attach(pid, "anonymous_id", dropped, prov())
    store.attach(absorbed, "device_id", absorbed_value, prov())
    store.merge(pid, absorbed, prov())
    store.update_traits(pid, lambda t: {"plan": "pro"})
    store.update_computed(pid, lambda c: {"orders": 9})
    store.add_event(pid, event("before"))

    replacement = Profile(
        pid, 5_000, 6_000, identities=(IdentityEdge("email", kept, prov(5_000, "m5")),)
    )
    store.put_profile(replacement, [event("after")])

    assert store.get(pid) == replacement
    assert names(store.events(pid, 10)) == ["after"]
    assert store.lookup("email", kept) == pid
    assert store.lookup("anonymous_id", dropped) is None
    assert store.lookup("device_id", absorbed_value) is None
    assert store.resolve(absorbed) is None, "redirects not in profile.merged are gone"
    assert store.attach(other, "anonymous_id", dropped, prov()) == other, "the id is free"


def test_put_profile_refuses_another_profiles_identity(store: ProfileStore) -> None:
    owner, pid, fresh, old = unique("owner"), unique("p"), unique("fresh"), unique("old")
    foreign, free = unique("e"), unique("anon")
    store.attach(owner, "email", foreign, prov())
    store.touch(pid, 1)
    store.update_traits(pid, lambda t: {"plan": "free"})
    store.add_event(pid, event("kept"))
    owner_before, pid_before = store.get(owner), store.get(pid)

    for target in (pid, fresh):
        claim = Profile(
            target,
            1,
            2,
            identities=(
                IdentityEdge("anonymous_id", free, prov()),
                IdentityEdge("email", foreign, prov()),
            ),
            traits={"plan": "stolen"},
            merged=(Redirect(old, target, prov()),),
        )
        with pytest.raises(StoreError, match=owner):
            store.put_profile(claim, [event("x")])

    assert store.get(owner) == owner_before
    assert store.get(pid) == pid_before
    assert names(store.events(pid, 10)) == ["kept"]
    assert store.get(fresh) is None
    assert store.events(fresh, 10) == []
    assert store.lookup("anonymous_id", free) is None
    assert store.lookup("email", foreign) == owner
    assert store.resolve(old) is None


def test_put_profile_of_a_merged_away_id_splits_it_off(store: ProfileStore) -> None:
    a, b, b_old = unique("a"), unique("b"), unique("b-old")
    va, vb = unique("anon"), unique("anon")
    store.attach(a, "anonymous_id", va, prov())
    store.attach(b, "anonymous_id", vb, prov())
    store.merge(a, b, prov(2_000, "merge"))
    store.detach("anonymous_id", vb)

    split = Profile(
        b,
        1_000,
        1_000,
        identities=(IdentityEdge("anonymous_id", vb, prov()),),
        merged=(Redirect(b_old, b, prov(500, "old-merge")),),
    )
    store.put_profile(split)

    assert store.resolve(b) == b
    assert store.get(b) == split
    survivor = store.get(a)
    assert survivor is not None
    assert survivor.merged == (), "b no longer leads to a"
    store.delete_profile(a)
    assert store.get(b) == split, "deleting a leaves the split-off profile whole"
    assert store.resolve(b_old) == b


# -- separations ----------------------------------------------------------------------------


def test_separations_are_idempotent_and_ordered(open_store: OpenStore) -> None:
    store = open_store()
    e1, e2, u = unique("e"), unique("e"), unique("u")
    first = Separation(("email", e1), ("email", e2), prov(1_000, "split-1", "operator"))
    second = Separation(("user_id", u), ("email", e1), prov(2_000, "split-2", "operator"))
    store.add_separation(first)
    store.add_separation(second)
    store.add_separation(first)
    store.add_separation(Separation(first.a, first.b, prov(3_000, "split-3", "operator")))

    mine = {e1, e2, u}
    for handle in (store, open_store()):
        assert [s for s in handle.separations() if s.a[1] in mine] == [first, second]


# -- match weights --------------------------------------------------------------------------


def test_match_weight_is_kept_on_identities_and_redirects(open_store: OpenStore) -> None:
    store = open_store()
    a, b, email, crm = unique("a"), unique("b"), unique("e"), unique("crm")
    store.attach(a, "email", email, prov(1_000, "m1"))
    store.attach(b, "crm_id", crm, Provenance("m2", "crm-import", 2_000, 11.5))
    store.merge(a, b, Provenance("m3", "crm-import", 3_000, -2.25))

    profile = open_store().get(b)
    assert profile is not None
    assert profile.identities == (
        IdentityEdge("crm_id", crm, Provenance("m2", "crm-import", 2_000, 11.5)),
        IdentityEdge("email", email, prov(1_000, "m1")),
    )
    assert profile.merged == (Redirect(b, a, Provenance("m3", "crm-import", 3_000, -2.25)),)


# -- delete, lifecycle ----------------------------------------------------------------------


def test_delete_profile_removes_history_and_computed(store: ProfileStore) -> None:
    a, b, keep = unique("a"), unique("b"), unique("keep")
    for pid in (a, b, keep):
        store.touch(pid, 1)
        store.add_event(pid, event(f"{pid}-1"))
        store.update_computed(pid, lambda c: {"ltv": 10})
    store.merge(a, b, prov())

    assert store.delete_profile(b) is True

    for pid in (a, b):
        assert store.events(pid, 10) == []
        assert store.resolve(pid) is None
        with pytest.raises(UnknownProfileError):
            store.add_event(pid, event("late"))
    store.touch(a, 5)
    reborn = store.get(a)
    assert reborn is not None
    assert reborn.computed == {}
    assert store.events(a, 10) == [], "a new profile of an old id starts with no history"
    assert names(store.events(keep, 10)) == [f"{keep}-1"]
    kept = store.get(keep)
    assert kept is not None
    assert kept.computed == {"ltv": 10}


def test_closed_store_refuses_new_methods(store: ProfileStore) -> None:
    store.close()
    with pytest.raises(StoreClosedError), store.transaction():
        pass
    with pytest.raises(StoreClosedError):
        store.load_offsets("identity")
    with pytest.raises(StoreClosedError):
        store.events(unique("p"), 10)
    with pytest.raises(StoreClosedError):
        store.scan(None, 10)
