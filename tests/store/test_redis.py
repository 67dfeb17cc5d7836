"""What only the Redis serving store does (the shared contract is in ``test_contract*.py``):
a transaction block that another writer overtook fails whole, keys carry the Redis Cluster
hash tags of the documented layout, and the driver is imported only when asked for."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis

from clew.store import Provenance, RedisConflictError, RedisProfileStore, StoreError


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
