"""Fixtures for the serving-store contract suite, parametrized by backend.

A backend is a factory that opens a :class:`ProfileStore` on one storage location; calling it
again opens another handle on the same storage (that is how the durability tests "restart").
Every test uses unique profile ids and identity values, so a shared server works too; on the
Redis server, which the whole session shares, each test also has its own key prefix.
Handles are closed at teardown even when a test closed them already, so ``close`` must be
safe to call twice.

``redis-cluster`` (a real 3-primary Redis Cluster, one per session, the store in cluster mode)
is not in ``BACKENDS``: ``test_contract_cluster.py`` runs the contract suite against it alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clew.store import MemoryProfileStore, ProfileStore, SQLiteProfileStore

BACKENDS = ["sqlite", "memory", "redis"]

OpenStore = Callable[[], ProfileStore]


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a handle on this test's store; every handle is closed after the test."""
    handles: list[ProfileStore] = []
    keeper = MemoryProfileStore()
    prefix = f"test-{uuid.uuid4().hex}"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    if request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_service").url

    def open_() -> ProfileStore:
        if request.param == "sqlite":
            handle: ProfileStore = SQLiteProfileStore(tmp_path / "store.db")
        elif request.param == "memory":
            # One in-memory state per test, kept by a handle the test never sees; "reopening"
            # opens another handle on it.
            handle = MemoryProfileStore(share=keeper)
        elif request.param == "redis":
            from clew.store import RedisProfileStore

            handle = RedisProfileStore(url, prefix=prefix)
        elif request.param == "redis-cluster":
            from clew.store import RedisProfileStore

            handle = RedisProfileStore(url, prefix=prefix, cluster=True)
        else:
            raise AssertionError(f"unknown store backend {request.param!r}")
        handles.append(handle)
        return handle

    yield open_
    for handle in reversed(handles):
        handle.close()


@pytest.fixture
def store(open_store: OpenStore) -> ProfileStore:
    return open_store()
