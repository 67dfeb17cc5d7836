"""The serving-store contract (``clew.store.base``), run against every backend in
``conftest.BACKENDS``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest

from clew.store import (
    IdentityEdge,
    ProfileStore,
    Provenance,
    StoreClosedError,
    StoreError,
    Traits,
    UnknownProfileError,
)

OpenStore = Callable[[], ProfileStore]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def prov(time_ms: int = 1_000, message_id: str = "m1", source_id: str = "web") -> Provenance:
    return Provenance(message_id, source_id, time_ms)


def assert_gone(store: ProfileStore, *profile_ids: str) -> None:
    for pid in profile_ids:
        assert store.resolve(pid) is None
        assert store.get(pid) is None


# -- identities and lookup ----------------------------------------------------------------


def test_unknown_ids_give_none(store: ProfileStore) -> None:
    assert store.lookup("email", unique("nobody")) is None
    assert_gone(store, unique("p"))
    assert store.detach("email", unique("nobody")) is None
    assert store.delete_profile(unique("p")) is False


def test_lookup_after_attach_and_profile_snapshot(store: ProfileStore) -> None:
    pid, email, anon = unique("p"), unique("e"), unique("a")
    assert store.attach(pid, "email", email, prov(2_000, "m2")) == pid
    assert store.attach(pid, "anonymous_id", anon, prov(1_000, "m1", "ios")) == pid

    assert store.lookup("email", email) == pid
    assert store.lookup("anonymous_id", anon) == pid
    assert store.lookup("user_id", email) is None, "the id type is part of the key"
    assert store.resolve(pid) == pid
    profile = store.get(pid)
    assert profile is not None
    assert profile.profile_id == pid
    assert profile.identities == (
        IdentityEdge("anonymous_id", anon, prov(1_000, "m1", "ios")),
        IdentityEdge("email", email, prov(2_000, "m2")),
    )
    assert (profile.first_seen_ms, profile.last_seen_ms) == (1_000, 2_000)
    assert profile.traits == {}
    assert profile.merged == ()


def test_attach_is_a_claim_and_keeps_first_provenance(store: ProfileStore) -> None:
    a, b, email = unique("a"), unique("b"), unique("e")
    assert store.attach(a, "email", email, prov(1_000, "first")) == a
    assert store.attach(a, "email", email, prov(5_000, "again")) == a
    assert store.attach(b, "email", email, prov(9_000, "other")) == a, "owner is reported"

    profile = store.get(a)
    assert profile is not None
    assert profile.identities == (IdentityEdge("email", email, prov(1_000, "first")),)
    assert profile.last_seen_ms == 5_000
    assert store.get(b) is None, "a failed claim creates nothing"


def test_touch_creates_and_widens_seen_times(store: ProfileStore) -> None:
    pid = unique("p")
    assert store.touch(pid, 5_000) == pid
    store.touch(pid, 3_000)
    store.touch(pid, 4_000)
    store.touch(pid, 8_000)
    profile = store.get(pid)
    assert profile is not None
    assert (profile.first_seen_ms, profile.last_seen_ms) == (3_000, 8_000)


def test_detach_removes_identity_but_keeps_profile(store: ProfileStore) -> None:
    pid, email, other = unique("p"), unique("e"), unique("p")
    store.attach(pid, "email", email, prov())
    assert store.detach("email", email) == pid
    assert store.lookup("email", email) is None
    profile = store.get(pid)
    assert profile is not None
    assert profile.identities == ()
    assert store.attach(other, "email", email, prov()) == other, "the value is free again"


# -- traits ---------------------------------------------------------------------------------


def test_update_traits_read_modify_write(store: ProfileStore) -> None:
    pid = unique("p")
    store.touch(pid, 1)
    assert store.update_traits(pid, lambda t: {**t, "plan": "free", "n": 1}) == {
        "plan": "free",
        "n": 1,
    }
    store.update_traits(pid, lambda t: {**t, "n": t["n"] + 1, "tags": ["a", "b"]})
    profile = store.get(pid)
    assert profile is not None
    assert profile.traits == {"plan": "free", "n": 2, "tags": ["a", "b"]}


def test_failed_trait_update_changes_nothing(store: ProfileStore) -> None:
    pid = unique("p")
    store.touch(pid, 1)
    store.update_traits(pid, lambda t: {"plan": "free"})

    def boom(traits: Traits) -> Traits:
        raise ValueError("caller bug")

    with pytest.raises(ValueError, match="caller bug"):
        store.update_traits(pid, boom)
    with pytest.raises(StoreError):
        store.update_traits(pid, lambda t: ["not", "a", "dict"])  # type: ignore[arg-type,return-value]
    profile = store.get(pid)
    assert profile is not None
    assert profile.traits == {"plan": "free"}


def test_update_traits_of_unknown_profile_raises(store: ProfileStore) -> None:
    pid = unique("p")
    with pytest.raises(UnknownProfileError, match=pid):
        store.update_traits(pid, lambda t: {"x": 1})
    assert store.get(pid) is None


# -- merge ----------------------------------------------------------------------------------


def test_merge_moves_everything_and_old_id_resolves(store: ProfileStore) -> None:
    a, b = unique("a"), unique("b")
    anon_a, anon_b, email = unique("anon"), unique("anon"), unique("e")
    store.attach(a, "anonymous_id", anon_a, prov(2_000, "ma"))
    store.attach(b, "anonymous_id", anon_b, prov(1_000, "mb"))
    store.attach(b, "email", email, prov(3_000, "mb2"))
    store.update_traits(a, lambda t: {"name": "Ada", "plan": "pro"})
    store.update_traits(b, lambda t: {"name": "A.", "city": "Oslo"})

    assert store.merge(a, b, prov(4_000, "alias-1", "server")) == a

    for pid in (a, b):
        assert store.resolve(pid) == a
        profile = store.get(pid)
        assert profile is not None
        assert profile.profile_id == a
    for id_type, value in (("anonymous_id", anon_a), ("anonymous_id", anon_b), ("email", email)):
        assert store.lookup(id_type, value) == a
    profile = store.get(a)
    assert profile is not None
    assert {(e.id_type, e.value, e.provenance.message_id) for e in profile.identities} == {
        ("anonymous_id", anon_a, "ma"),
        ("anonymous_id", anon_b, "mb"),
        ("email", email, "mb2"),
    }
    assert profile.traits == {"name": "Ada", "plan": "pro", "city": "Oslo"}
    assert (profile.first_seen_ms, profile.last_seen_ms) == (1_000, 3_000)
    assert [(r.from_id, r.into_id, r.provenance) for r in profile.merged] == [
        (b, a, prov(4_000, "alias-1", "server"))
    ]
    # Writes through the old id land on the survivor.
    assert store.attach(b, "user_id", unique("u"), prov()) == a
    store.update_traits(b, lambda t: {**t, "vip": True})
    profile = store.get(a)
    assert profile is not None
    assert profile.traits["vip"] is True


def test_merge_uses_the_callers_trait_strategy(store: ProfileStore) -> None:
    a, b = unique("a"), unique("b")
    store.touch(a, 1)
    store.touch(b, 1)
    store.update_traits(a, lambda t: {"orders": 2, "name": "old"})
    store.update_traits(b, lambda t: {"orders": 3, "name": "new"})

    def combine(into: Traits, from_: Traits) -> Traits:
        return {**into, **from_, "orders": into["orders"] + from_["orders"]}

    store.merge(a, b, prov(), traits=combine)
    profile = store.get(b)
    assert profile is not None
    assert profile.traits == {"orders": 5, "name": "new"}


def test_chains_of_merges_resolve(store: ProfileStore) -> None:
    ids = [unique(f"p{i}") for i in range(5)]
    values = [unique("anon") for _ in ids]
    for pid, value in zip(ids, values, strict=True):
        store.attach(pid, "anonymous_id", value, prov())
    # p0 -> p1 -> p2 -> p3 -> p4, each merge named by a possibly stale id.
    for i in range(1, len(ids)):
        assert store.merge(ids[i], ids[i - 1], prov(i, f"m{i}")) == ids[i]
    assert store.merge(ids[-1], ids[0], prov()) == ids[-1], "already one profile: a no-op"

    survivor = ids[-1]
    for pid in ids:
        assert store.resolve(pid) == survivor
    for value in values:
        assert store.lookup("anonymous_id", value) == survivor
    profile = store.get(ids[0])
    assert profile is not None
    assert profile.profile_id == survivor
    assert len(profile.identities) == len(ids)
    assert [r.provenance.message_id for r in profile.merged] == ["m1", "m2", "m3", "m4"]


def test_merge_with_unknown_profile_raises_and_changes_nothing(store: ProfileStore) -> None:
    a, ghost = unique("a"), unique("ghost")
    store.touch(a, 1)
    with pytest.raises(UnknownProfileError, match=ghost):
        store.merge(a, ghost, prov())
    with pytest.raises(UnknownProfileError, match=ghost):
        store.merge(ghost, a, prov())
    assert store.resolve(a) == a
    assert_gone(store, ghost)


def test_failed_merge_changes_nothing(store: ProfileStore) -> None:
    a, b, value = unique("a"), unique("b"), unique("v")
    store.touch(a, 1)
    store.attach(b, "anonymous_id", value, prov())

    def boom(into: Traits, from_: Traits) -> Traits:
        raise ValueError("caller bug")

    with pytest.raises(ValueError, match="caller bug"):
        store.merge(a, b, prov(), traits=boom)
    assert store.resolve(b) == b
    assert store.lookup("anonymous_id", value) == b


# -- delete ---------------------------------------------------------------------------------


def test_delete_removes_every_trace(store: ProfileStore) -> None:
    a, b, c, keep = unique("a"), unique("b"), unique("c"), unique("keep")
    va, vb, vc, vk = (unique("v") for _ in range(4))
    for pid, value in ((a, va), (b, vb), (c, vc), (keep, vk)):
        store.attach(pid, "anonymous_id", value, prov())
        store.update_traits(pid, lambda t: {"secret": "x"})
    store.merge(b, a, prov())
    store.merge(c, b, prov())

    assert store.delete_profile(a) is True, "any id of the profile names it"

    assert_gone(store, a, b, c)
    for value in (va, vb, vc):
        assert store.lookup("anonymous_id", value) is None
    assert store.delete_profile(c) is False
    # The ids are free again and do not drag old data back.
    assert store.attach(a, "anonymous_id", va, prov(7)) == a
    profile = store.get(a)
    assert profile is not None
    assert profile.traits == {}
    assert profile.merged == ()
    assert [e.value for e in profile.identities] == [va]
    assert store.resolve(b) is None
    # Other profiles are untouched.
    kept = store.get(keep)
    assert kept is not None
    assert kept.traits == {"secret": "x"}
    assert store.lookup("anonymous_id", vk) == keep


# -- capabilities ---------------------------------------------------------------------------

# What each backend states about itself (``ProfileStore`` capabilities, asked instead of its
# class or the configured backend name), per backend name of the ``open_store`` fixture
# (``redis-cluster`` is ``test_contract_cluster``'s): whether reads go over the network, and
# whether the store is a file on this machine. A new backend adds its row here.
CAPABILITIES: dict[str, tuple[bool, bool]] = {
    "sqlite": (False, True),
    "memory": (False, False),
    "redis": (True, False),
    "redis-cluster": (True, False),
}


def test_capabilities_are_the_backends(request: pytest.FixtureRequest, store: ProfileStore) -> None:
    over_network, has_file = CAPABILITIES[request.node.callspec.params["open_store"]]
    assert store.reads_over_network is over_network
    path = store.local_file
    assert (path is not None) is has_file
    if path is not None:
        store.attach(unique("p"), "email", unique("e"), prov())
        assert path.is_file()  # the file the store writes, which erasure scrubs


def test_version_tells_a_cache_whether_profiles_were_written(
    request: pytest.FixtureRequest, open_store: OpenStore
) -> None:
    """A stage keeps profiles in memory between its transactions only while ``version``
    says nobody wrote profiles: through its handle or another. Redis cannot tell cheaply."""
    store, other = open_store(), open_store()
    if request.node.callspec.params["open_store"] in ("redis", "redis-cluster"):
        assert store.version() is None
        return
    pid = unique("p")
    store.attach(pid, "email", unique("e"), prov())
    before = store.version()
    assert before is not None
    assert store.version() == before  # reading changes nothing
    store.get(pid), store.lookup("email", "x"), store.load_offsets("g")
    store.set_timers({pid: 5})
    store.outbox_put("g", b"x")
    store.save_offsets("g", {("events", 0): 1})
    assert store.version() == before  # nor do timers, the outbox and offsets
    other.update_traits(pid, lambda t: {**t, "plan": "pro"})
    after_other = store.version()
    assert after_other != before
    store.touch(pid, 2_000)
    assert store.version() != after_other


# -- concurrency, durability, lifecycle ------------------------------------------------------


def test_concurrent_writers_lose_nothing(store: ProfileStore) -> None:
    threads, per_thread = 8, 50
    pids = [unique("p") for _ in range(threads)]
    counter = unique("counter")
    store.touch(counter, 1)
    errors: list[BaseException] = []

    def work(pid: str) -> None:
        try:
            for i in range(per_thread):
                store.attach(pid, "device_id", f"{pid}-{i}", prov(i))
                store.update_traits(counter, lambda t: {"n": t.get("n", 0) + 1})
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(pid,)) for pid in pids]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert errors == []
    for pid in pids:
        profile = store.get(pid)
        assert profile is not None
        assert len(profile.identities) == per_thread
        assert store.lookup("device_id", f"{pid}-{per_thread - 1}") == pid
    total = store.get(counter)
    assert total is not None
    assert total.traits == {"n": threads * per_thread}


def test_concurrent_claims_of_one_identity_have_one_winner(store: ProfileStore) -> None:
    value = unique("email")
    pids = [unique("p") for _ in range(8)]
    owners: list[str] = []
    barrier = threading.Barrier(len(pids))

    def claim(pid: str) -> None:
        barrier.wait()
        owners.append(store.attach(pid, "email", value, prov()))

    workers = [threading.Thread(target=claim, args=(pid,)) for pid in pids]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert len(set(owners)) == 1
    assert store.lookup("email", value) == owners[0]
    assert sum(store.get(pid) is not None for pid in pids) == 1


def test_everything_survives_close_and_reopen(open_store: OpenStore) -> None:
    first = open_store()
    a, b, email, gone = unique("a"), unique("b"), unique("e"), unique("gone")
    first.attach(a, "email", email, prov(10, "m1"))
    first.touch(b, 20)
    first.update_traits(b, lambda t: {"plan": "pro"})
    first.merge(a, b, prov(30, "m2"))
    first.touch(gone, 5)
    first.delete_profile(gone)
    before = first.get(a)
    first.close()
    first.close()

    second = open_store()
    assert second.get(b) == before
    assert second.lookup("email", email) == a
    assert second.resolve(gone) is None


def test_closed_store_refuses_calls(store: ProfileStore) -> None:
    store.close()
    with pytest.raises(StoreClosedError):
        store.lookup("email", "x")
    with pytest.raises(StoreClosedError):
        store.touch(unique("p"), 1)
