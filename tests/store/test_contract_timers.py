"""The serving-store contract's timers and outboxes (``set_timers``, ``due_timers``,
``next_timer``, ``outbox_*``), run against every backend in ``conftest.BACKENDS``.

Timers and outbox groups are store-wide, and the Redis backend of one test has a key prefix of
its own, so every test starts from a store without timers or payloads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest

from clew.store import (
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    RedisConflictError,
    StoreClosedError,
    StoredEvent,
)

OpenStore = Callable[[], ProfileStore]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def prov(time_ms: int = 1_000, message_id: str = "m1") -> Provenance:
    return Provenance(message_id, "web", time_ms)


class Crash(Exception):
    """Raised by a test to abort a transaction block."""


# -- timers ---------------------------------------------------------------------------------


def test_timers_are_set_replaced_and_removed(store: ProfileStore) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    assert store.next_timer() is None
    assert store.due_timers(10**15) == []

    store.set_timers({a: 300, b: 100, c: 200})
    assert store.due_timers(1_000) == [(b, 100), (c, 200), (a, 300)]
    store.set_timers({b: 400, c: None})
    assert store.due_timers(1_000) == [(a, 300), (b, 400)], "one timer per profile, replaced"
    store.set_timers({c: None, unique("never"): None})
    assert store.due_timers(1_000) == [(a, 300), (b, 400)], "removing no timer is a no-op"
    store.set_timers({})
    assert store.next_timer() == 300


def test_due_timers_are_earliest_first_up_to_now_and_limit(store: ProfileStore) -> None:
    a, b, c, d, e, f = (unique(name) for name in "abcdef")
    base = 1_700_000_000_000  # a real clock's value
    store.set_timers(
        {d: base + 30, a: base, f: base + 50, b: base + 10, e: base + 40, c: base + 20}
    )
    expected = [(a, base), (b, base + 10), (c, base + 20), (d, base + 30), (e, base + 40)]
    expected.append((f, base + 50))

    assert store.due_timers(base + 50) == expected
    assert store.due_timers(base + 20) == expected[:3], "due at now is included, later is not"
    assert store.due_timers(base + 19) == expected[:2]
    assert store.due_timers(base - 1) == []
    assert store.due_timers(base + 50, limit=4) == expected[:4]
    assert store.due_timers(base + 50, limit=0) == []
    assert store.next_timer() == base
    assert store.due_timers(base + 50) == expected, "reading does not remove timers"


def test_next_timer_follows_replacements(store: ProfileStore) -> None:
    a, b = unique("a"), unique("b")
    store.set_timers({a: 5_000})
    assert store.next_timer() == 5_000
    store.set_timers({b: 7_000})
    assert store.next_timer() == 5_000
    store.set_timers({a: 9_000})
    assert store.next_timer() == 7_000, "a replaced timer no longer counts at its old time"
    store.set_timers({b: None})
    assert store.next_timer() == 9_000
    store.set_timers({a: None})
    assert store.next_timer() is None


def test_timers_need_no_profile_and_are_not_resolved(store: ProfileStore) -> None:
    a, b, stranger = unique("a"), unique("b"), unique("stranger")
    store.touch(a, 1)
    store.touch(b, 1)
    store.merge(a, b, prov())
    store.set_timers({stranger: 10, b: 20})
    assert store.due_timers(100) == [(stranger, 10), (b, 20)], "ids are kept as given"
    assert store.get(stranger) is None, "a timer creates no profile"


def test_merge_removes_the_merged_away_profiles_timer(store: ProfileStore) -> None:
    a, b = unique("a"), unique("b")
    store.touch(a, 1)
    store.touch(b, 1)
    store.set_timers({a: 50, b: 10})
    assert store.merge(a, b, prov()) == a
    assert store.due_timers(100) == [(a, 50)]
    assert store.next_timer() == 50


def test_write_back_removes_the_timers_of_merged_away_profiles(store: ProfileStore) -> None:
    a, b = unique("a"), unique("b")
    store.touch(a, 1)
    store.touch(b, 2)
    store.set_timers({a: 50, b: 10})
    store.write_back([Profile(a, 1, 2, merged=(Redirect(b, a, prov()),))], {b: a}, [])
    assert store.resolve(b) == a
    assert store.due_timers(100) == [(a, 50)]


def test_delete_profile_removes_its_timers(store: ProfileStore) -> None:
    a, b, other = unique("a"), unique("b"), unique("other")
    for pid in (a, b, other):
        store.touch(pid, 1)
    store.merge(a, b, prov())
    # A timer set on the merged-away id after the merge is a trace of the profile too.
    store.set_timers({a: 30, b: 20, other: 10})
    assert store.delete_profile(b) is True
    assert store.due_timers(100) == [(other, 10)]
    assert store.delete_profile(other) is True
    assert store.next_timer() is None


def test_timers_survive_close_and_reopen(open_store: OpenStore) -> None:
    first = open_store()
    a, b = unique("a"), unique("b")
    first.set_timers({a: 1_000, b: 2_000})
    first.set_timers({b: None})
    first.close()

    second = open_store()
    assert second.due_timers(5_000) == [(a, 1_000)]
    assert second.next_timer() == 1_000


# -- outbox ---------------------------------------------------------------------------------


def test_outbox_sequence_increases_per_group_and_groups_are_independent(
    store: ProfileStore,
) -> None:
    seqs = [store.outbox_put("profiles", b"p%d" % i) for i in range(3)]
    other = store.outbox_put("audiences", b"a0")
    seqs.append(store.outbox_put("profiles", b"p3"))

    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert store.outbox_pending("profiles") == list(
        zip(seqs, [b"p0", b"p1", b"p2", b"p3"], strict=True)
    )
    assert store.outbox_pending("audiences") == [(other, b"a0")]
    assert store.outbox_pending("profiles", limit=2) == list(
        zip(seqs[:2], [b"p0", b"p1"], strict=True)
    )
    assert store.outbox_pending("profiles", limit=0) == []
    assert store.outbox_pending(unique("empty")) == []

    store.outbox_ack("profiles", seqs[-1])
    assert store.outbox_pending("profiles") == []
    assert store.outbox_pending("audiences") == [(other, b"a0")], "an ack is per group"


def test_outbox_ack_removes_up_to_the_sequence_only(store: ProfileStore) -> None:
    seqs = [store.outbox_put("g", b"%d" % i) for i in range(4)]
    store.outbox_ack("g", seqs[1])
    assert store.outbox_pending("g") == [(seqs[2], b"2"), (seqs[3], b"3")]
    store.outbox_ack("g", seqs[1])
    assert [s for s, _ in store.outbox_pending("g")] == seqs[2:], "acking again is a no-op"
    store.outbox_ack("g", seqs[3] + 1_000)
    assert store.outbox_pending("g") == []


def test_outbox_sequence_keeps_increasing_after_everything_is_acknowledged(
    open_store: OpenStore,
) -> None:
    store = open_store()
    first = store.outbox_put("g", b"one")
    store.outbox_ack("g", first)
    second = store.outbox_put("g", b"two")
    assert second > first
    store.close()

    reopened = open_store()
    assert reopened.outbox_pending("g") == [(second, b"two")]
    reopened.outbox_ack("g", second)
    assert reopened.outbox_put("g", b"three") > second


def test_an_ack_never_drops_a_payload_committed_meanwhile(open_store: OpenStore) -> None:
    """Writers putting to one group while a reader forwards and acknowledges what is pending:
    every payload is read exactly once (none commits below a sequence number acknowledged)."""
    reader = open_store()
    writers = [open_store() for _ in range(3)]
    sent = [[b"w%d-%d" % (w, i) for i in range(40)] for w in range(len(writers))]
    errors: list[BaseException] = []

    def write(handle: ProfileStore, payloads: list[bytes]) -> None:
        try:
            for payload in payloads:
                handle.outbox_put("g", payload)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=a) for a in zip(writers, sent, strict=True)]
    for t in threads:
        t.start()
    received: list[bytes] = []
    while True:
        finished = not any(t.is_alive() for t in threads)
        pending = reader.outbox_pending("g", limit=7)
        received.extend(payload for _, payload in pending)
        if pending:
            reader.outbox_ack("g", pending[-1][0])
        elif finished:
            break

    assert errors == []
    assert sorted(received) == sorted(p for payloads in sent for p in payloads)


def test_payloads_are_kept_as_given(store: ProfileStore) -> None:
    payloads = [b"", b"\x00\xff binary \x00", bytes(range(256)) * 40]
    seqs = [store.outbox_put("g", p) for p in payloads]
    assert store.outbox_pending("g") == list(zip(seqs, payloads, strict=True))


# -- transactions -----------------------------------------------------------------------------


def test_a_block_that_raises_leaves_timers_and_outbox_as_they_were(open_store: OpenStore) -> None:
    store = open_store()
    a, b, c = unique("a"), unique("b"), unique("c")
    store.touch(a, 1)
    store.touch(b, 1)
    store.set_timers({a: 10, b: 20})
    kept = store.outbox_put("g", b"kept")

    with pytest.raises(Crash), store.transaction():
        store.set_timers({a: None, b: 500, c: 5})
        store.outbox_put("g", b"doomed")
        store.outbox_put("other", b"doomed")
        store.outbox_ack("g", kept)
        store.merge(a, b, prov())
        raise Crash

    for handle in (store, open_store()):
        assert handle.due_timers(1_000) == [(a, 10), (b, 20)]
        assert handle.next_timer() == 10
        assert handle.outbox_pending("g") == [(kept, b"kept")]
        assert handle.outbox_pending("other") == []
    assert store.outbox_put("g", b"after") > kept, "the handle works after a rollback"


def test_a_block_sees_its_own_timers_and_payloads(open_store: OpenStore) -> None:
    store = open_store()
    a, b, c, d, e, newcomer = (unique(name) for name in "abcdeN")
    store.set_timers({a: 10, b: 20, c: 30, d: 40, e: 50})
    old = [store.outbox_put("g", b"old%d" % i) for i in range(3)]

    with store.transaction():
        store.set_timers({a: 1_000, b: None, newcomer: 1})
        assert store.due_timers(100, limit=3) == [(newcomer, 1), (c, 30), (d, 40)]
        assert store.due_timers(100) == [(newcomer, 1), (c, 30), (d, 40), (e, 50)]
        assert store.next_timer() == 1
        new = store.outbox_put("g", b"new")
        assert new > old[-1]
        store.outbox_ack("g", old[1])
        assert store.outbox_pending("g") == [(old[2], b"old2"), (new, b"new")]
        assert store.outbox_pending("g", limit=1) == [(old[2], b"old2")]

    reopened = open_store()
    assert reopened.due_timers(10_000) == [(newcomer, 1), (c, 30), (d, 40), (e, 50), (a, 1_000)]
    assert reopened.outbox_pending("g") == [(old[2], b"old2"), (new, b"new")]


def test_a_nested_block_that_raises_undoes_only_its_timers_and_payloads(
    store: ProfileStore,
) -> None:
    a, b = unique("a"), unique("b")
    with store.transaction():
        store.set_timers({a: 10})
        first = store.outbox_put("g", b"first")
        with pytest.raises(Crash), store.transaction():
            store.set_timers({a: None, b: 20})
            store.outbox_put("g", b"doomed")
            store.outbox_ack("g", first)
            raise Crash
        assert store.due_timers(100) == [(a, 10)]
    assert store.due_timers(100) == [(a, 10)]
    assert store.outbox_pending("g") == [(first, b"first")]


def test_workers_sharing_timers_fire_each_timer_once(open_store: OpenStore) -> None:
    """The pattern the contract is for: in one block, read what is due, do the work and
    remove (or replace) the timers. Workers racing for the same timers fire each once; a
    Redis block that lost the race raises RedisConflictError and is run again."""
    setup = open_store()
    pids = [unique(f"p{i}") for i in range(20)]
    for pid in pids:
        setup.touch(pid, 1)
    setup.set_timers({pid: 100 + i for i, pid in enumerate(pids)})
    handles = [open_store() for _ in range(3)]
    errors: list[BaseException] = []

    def work(handle: ProfileStore) -> None:
        try:
            while True:
                try:
                    with handle.transaction():
                        due = handle.due_timers(1_000, limit=3)
                        for pid, ms in due:
                            handle.add_event(pid, StoredEvent(0, f"fired-{ms}", ms, b"{}"))
                            handle.outbox_put(f"fired-{id(handle)}", pid.encode())
                        handle.set_timers(dict.fromkeys((pid for pid, _ in due), None))
                except RedisConflictError:
                    continue
                if not due:
                    return
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(h,)) for h in handles]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)

    assert errors == []
    for i, pid in enumerate(pids):
        assert [e.message_id for e in setup.events(pid, 10)] == [f"fired-{100 + i}"]
    fired = [p for h in handles for _, p in setup.outbox_pending(f"fired-{id(h)}")]
    assert sorted(fired) == sorted(pid.encode() for pid in pids)
    assert setup.next_timer() is None


def test_closed_store_refuses_timers_and_outbox(store: ProfileStore) -> None:
    store.close()
    with pytest.raises(StoreClosedError):
        store.set_timers({"p": 1})
    with pytest.raises(StoreClosedError):
        store.due_timers(1)
    with pytest.raises(StoreClosedError):
        store.next_timer()
    with pytest.raises(StoreClosedError):
        store.outbox_put("g", b"x")
    with pytest.raises(StoreClosedError):
        store.outbox_pending("g")
    with pytest.raises(StoreClosedError):
        store.outbox_ack("g", 1)
