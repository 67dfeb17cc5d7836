"""What only the Redis serving store does (the shared contract is in ``test_contract*.py``):
a transaction block that another writer overtook fails whole, keys carry the Redis Cluster
hash tags of the documented layout, and the driver is imported only when asked for. On a real
Redis Cluster: a store in cluster mode is one slot and different prefixes spread over the
primaries, and a store follows its slot when it moves to another primary, waiting out the
migration, with no half-merged profile in between."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from redis.crc import key_slot

from _redis_cluster import ClusterService, redis_cluster
from _services import LOOPBACK, ServiceUnavailable, free_port, unavailable
from clew.backends import open_store
from clew.config import Settings
from clew.store import (
    Provenance,
    RedisConflictError,
    RedisProfileStore,
    RedisUnavailableError,
    StoredEvent,
    StoreError,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def prefix() -> str:
    return unique("test")


def test_a_block_overtaken_by_another_writer_writes_nothing(redis_url: str, prefix: str) -> None:
    writer, other = (RedisProfileStore(redis_url, prefix=prefix) for _ in range(2))
    a, value = unique("a"), unique("e")
    writer.touch(a, 1)

    with pytest.raises(RedisConflictError, match="run the block again"), writer.transaction():
        writer.update_traits(a, lambda t: {**t, "plan": "pro"})
        writer.attach(a, "email", value, Provenance("m1", "web", 1))
        other.update_traits(a, lambda t: {**t, "vip": True})

    profile = other.get(a)
    assert profile is not None
    assert profile.traits == {"vip": True}, "the other writer's change stands, the block's not"
    assert other.lookup("email", value) is None
    with writer.transaction():
        writer.update_traits(a, lambda t: {**t, "plan": "pro"})
    assert writer.get(a) is not None
    assert other.update_traits(a, lambda t: t) == {"vip": True, "plan": "pro"}
    writer.close()
    other.close()


def test_keys_follow_the_cluster_ready_layout(redis_url: str, prefix: str) -> None:
    store = RedisProfileStore(redis_url, prefix=prefix, history=2)
    a, b, value = unique("a"), unique("b"), unique("e")
    store.attach(a, "email", value, Provenance("m1", "web", 1))
    store.touch(b, 1)
    store.merge(a, b, Provenance("m2", "web", 2))
    store.save_offsets("profiles", {("events", 0): 1})

    client = redis.Redis.from_url(redis_url)
    keys = {k.decode() for k in client.scan_iter(match=f"{prefix}:*")}
    client.close()
    assert keys == {
        f"{prefix}:{{p:{a}}}:node",
        f"{prefix}:{{p:{b}}}:node",
        f"{prefix}:{{i:email:{value}}}",
        f"{prefix}:{{g}}:profiles",
        f"{prefix}:{{o:profiles}}",
    }
    store.close()


def test_a_borrowed_client_stays_open_and_prefixes_are_checked(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisProfileStore(client, prefix=unique("test"))
    store.touch(unique("p"), 1)
    store.close()
    assert client.ping() is True
    client.close()
    with pytest.raises(StoreError, match="braces"):
        RedisProfileStore(redis_url, prefix="{clew}")


def test_importing_the_store_package_does_not_import_redis() -> None:
    code = "import sys, clew.store; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- Redis Cluster (the session's 3-primary cluster, tests/_redis_cluster.py) ---------------


def _node(port: int) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=port)


def _owner(cluster: ClusterService, slot: int) -> int:
    """The port of the primary serving ``slot``, as the first node that answers says."""
    for port in cluster.ports:
        with _node(port) as client, contextlib.suppress(redis.ConnectionError):
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
    raise AssertionError(f"slot {slot} is not served")


def _keys_on(port: int, pattern: str) -> set[str]:
    with _node(port) as client:
        return {k.decode() for k in client.scan_iter(match=pattern)}


def _begin_move(cluster: ClusterService, slot: int, to: int) -> int:
    """Mark ``slot`` as moving from its primary to the node at port ``to``; returns the port
    it moves from."""
    source = _owner(cluster, slot)
    with _node(source) as src, _node(to) as dst:
        src_id, dst_id = (
            src.execute_command("CLUSTER", "MYID"),
            dst.execute_command("CLUSTER", "MYID"),
        )
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    return source


def _migrate(source: int, to: int, keys: list[bytes]) -> None:
    if keys:
        with _node(source) as src:
            src.execute_command("MIGRATE", LOOPBACK, to, "", 0, 5000, "KEYS", *keys)


def _finish_move(cluster: ClusterService, slot: int, source: int, to: int) -> None:
    """Migrate the slot's remaining keys, then make ``to`` its owner on every node."""
    with _node(source) as src:
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            _migrate(source, to, keys)
    with _node(to) as dst:
        dst_id = dst.execute_command("CLUSTER", "MYID")
    for port in (to, source, *(p for p in cluster.ports if p not in (to, source))):
        with _node(port) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def test_in_cluster_mode_a_store_is_one_slot_and_prefixes_spread(
    redis_cluster_service: ClusterService,
) -> None:
    cluster = redis_cluster_service
    # Prefixes whose slots are served by different primaries (found by trying names).
    by_owner: dict[int, str] = {}
    while len(by_owner) < len(cluster.ports):
        name = unique("tenant")
        by_owner.setdefault(_owner(cluster, key_slot(f"{{{name}}}".encode())), name)

    for port, prefix in by_owner.items():
        store = RedisProfileStore(cluster.url, prefix=prefix, cluster=True, history=2)
        a, b, value = unique("a"), unique("b"), unique("e")
        store.attach(a, "email", value, Provenance("m1", "web", 1))
        store.touch(b, 1)
        store.add_event(b, StoredEvent(0, "m0", 1, b"{}"))
        store.merge(a, b, Provenance("m2", "web", 2))
        store.save_offsets("profiles", {("events", 0): 1})
        store.set_timers({a: 5})
        store.outbox_put("changes", b"x")
        store.close()

        expected = {
            f"{{{prefix}}}:{{p:{a}}}:node",
            f"{{{prefix}}}:{{p:{a}}}:hist",
            f"{{{prefix}}}:{{p:{a}}}:timer",
            f"{{{prefix}}}:{{p:{b}}}:node",
            f"{{{prefix}}}:{{i:email:{value}}}",
            f"{{{prefix}}}:{{g}}:seq",
            f"{{{prefix}}}:{{g}}:profiles",
            f"{{{prefix}}}:{{g}}:timers",
            f"{{{prefix}}}:{{o:profiles}}",
            f"{{{prefix}}}:{{q:changes}}:seq",
            f"{{{prefix}}}:{{q:changes}}:outbox",
        }
        # Every key on the one primary of the prefix's slot, none elsewhere.
        assert _keys_on(port, f"{{{prefix}}}:*") == expected
        for other in cluster.ports:
            if other != port:
                assert _keys_on(other, f"*{prefix}*") == set()
        with _node(port) as client:
            slots = {client.execute_command("CLUSTER", "KEYSLOT", key) for key in expected}
        assert slots == {key_slot(f"{{{prefix}}}".encode())}


def test_a_cluster_store_follows_its_slot_to_another_primary(
    redis_cluster_service: ClusterService,
) -> None:
    cluster = redis_cluster_service
    prefix = unique("test")
    slot = key_slot(f"{{{prefix}}}".encode())
    store = RedisProfileStore(cluster.url, prefix=prefix, cluster=True)
    a, value = unique("a"), unique("e")
    store.attach(a, "email", value, Provenance("m1", "web", 1))
    store.update_traits(a, lambda t: {"plan": "pro"})

    to = next(p for p in cluster.ports if p != _owner(cluster, slot))
    source = _begin_move(cluster, slot, to)
    _finish_move(cluster, slot, source, to)
    assert _owner(cluster, slot) == to

    # The store still holds the old slot map: its next calls meet MOVED and follow it.
    assert store.lookup("email", value) == a
    assert store.update_traits(a, lambda t: {**t, "visits": 1}) == {"plan": "pro", "visits": 1}
    with store.transaction():
        store.touch(unique("b"), 2)
    assert _keys_on(source, f"{{{prefix}}}:*") == set()
    assert f"{{{prefix}}}:{{p:{a}}}:node" in _keys_on(to, f"{{{prefix}}}:*")
    store.close()


def test_a_cluster_store_waits_out_a_migration_of_its_slot(
    redis_cluster_service: ClusterService,
) -> None:
    cluster = redis_cluster_service
    prefix = unique("test")
    slot = key_slot(f"{{{prefix}}}".encode())
    store = RedisProfileStore(cluster.url, prefix=prefix, cluster=True)
    a, b = unique("a"), unique("b")
    store.touch(a, 1)
    store.touch(b, 1)
    to = next(p for p in cluster.ports if p != _owner(cluster, slot))
    source = _begin_move(cluster, slot, to)
    # Half-way: a's profile is on the new primary already, b's and the rest not yet.
    _migrate(source, to, [f"{{{prefix}}}:{{p:{a}}}:node".encode()])

    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.append(store.merge(b, a, Provenance("m1", "web", 2)))
    )
    worker.start()
    worker.join(0.5)
    assert worker.is_alive(), "the merge spans both halves: it waits for the migration"
    _finish_move(cluster, slot, source, to)
    worker.join(10)

    assert results == [b]
    assert store.resolve(a) == b
    merged = store.get(b)
    assert merged is not None
    assert [r.from_id for r in merged.merged] == [a]
    store.close()


def test_a_plain_store_pointed_at_a_cluster_says_to_turn_cluster_mode_on(
    redis_cluster_service: ClusterService,
) -> None:
    url = redis_cluster_service.url
    store = RedisProfileStore(url, prefix=unique("test"))
    # Either the node is asked for a key of another node's slot (MOVED) or to watch and
    # write a profile and the store-wide list together (CROSSSLOT); both say what to do.
    with pytest.raises(StoreError, match="set `redis_cluster = true`"):
        store.touch("p1", 1)
    store.close()
    # The node of the store-wide keys ({g}), and an id whose keys it serves too: then the
    # refusal can only be CROSSSLOT.
    port = _owner(redis_cluster_service, key_slot(b"g"))
    local = next(
        f"p{n}"
        for n in range(10_000)
        if _owner(redis_cluster_service, key_slot(f"p:p{n}".encode())) == port
    )
    store = RedisProfileStore(f"redis://{LOOPBACK}:{port}", prefix=unique("test"))
    with pytest.raises(StoreError, match="across slots"):
        store.touch(local, 1)
    store.close()


@pytest.fixture(scope="module")
def replicated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterService]:
    """A cluster of 3 primaries with a replica each, for the failover test alone (it stops
    a primary)."""
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(
                redis_cluster(tmp_path_factory.mktemp("replicated"), replicas=1)
            )
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield cluster


def test_a_cluster_store_follows_a_failover_to_the_replica(
    replicated_cluster: ClusterService,
) -> None:
    cluster = replicated_cluster
    prefix = unique("test")
    slot = key_slot(f"{{{prefix}}}".encode())
    store = RedisProfileStore(cluster.url, prefix=prefix, cluster=True)
    a, value = unique("a"), unique("e")
    store.attach(a, "email", value, Provenance("m1", "web", 1))
    store.update_traits(a, lambda t: {"plan": "pro"})
    primary = _owner(cluster, slot)
    with _node(primary) as client:
        # The write is on the replica before the primary goes (replication is asynchronous).
        assert client.execute_command("WAIT", 1, 5000) == 1
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)

    failures: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        try:
            traits = store.update_traits(a, lambda t: {**t, "visits": 1})
            break
        except RedisUnavailableError as exc:
            # Until a replica has taken over, calls fail retryably, and only so.
            failures.append(str(exc))
            assert time.monotonic() < deadline, f"no failover within 30 s: {failures[-1]}"
            time.sleep(0.2)
    assert failures, "the first call after the primary stopped cannot have reached it"
    assert traits == {"plan": "pro", "visits": 1}
    assert store.lookup("email", value) == a
    # The nodes learn of the new primary by gossip, soon after it took over.
    while _owner(cluster, slot) == primary:
        assert time.monotonic() < deadline, "the cluster still names the stopped primary"
        time.sleep(0.1)
    store.close()


def test_settings_open_a_cluster_store_found_from_any_listed_node(
    redis_cluster_service: ClusterService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cluster = redis_cluster_service
    prefix = unique("factory")
    monkeypatch.setenv("CLEW_STORE__BACKEND", "redis")
    # The URL's node is down: the store finds the cluster from the listed nodes.
    monkeypatch.setenv("CLEW_STORE__REDIS_URL", f"redis://{LOOPBACK}:{free_port()}")
    monkeypatch.setenv("CLEW_STORE__REDIS_CLUSTER", "true")
    monkeypatch.setenv("CLEW_STORE__REDIS_CLUSTER_NODES", json.dumps(cluster.nodes))
    monkeypatch.setenv("CLEW_STORE__REDIS_PREFIX", prefix)
    store = open_store(Settings(data_dir=tmp_path))
    store.attach("p1", "user_id", "u1", Provenance("m1", "web", 1))
    store.close()
    owner = _owner(cluster, key_slot(f"{{{prefix}}}".encode()))
    assert f"{{{prefix}}}:{{i:user_id:u1}}" in _keys_on(owner, f"{{{prefix}}}:*")
    with pytest.raises(ValidationError, match="host:port"):
        Settings.model_validate({"store": {"redis_cluster_nodes": ["redis-1"]}})
