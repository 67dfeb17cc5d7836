"""The destinations' storage contract (``clew.destination_store``), run against the data
directory's files and Redis: settings read back as written, a name is taken until removed,
the version moves with every change and only then, and what one handle writes another
reads at once (two processes, or two machines sharing a Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clew.destination_store import DestinationStore, DestinationTakenError, FileDestinationStore
from clew.destinations import (
    DestinationConfig,
    DestinationExistsError,
    Destinations,
    UnknownDestinationError,
)

BACKENDS = ["files", "redis"]

OpenStore = Callable[[], DestinationStore]

CRM = {"name": "crm", "type": "webhook", "url": "https://crm.test/in", "batch_size": 5}


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens another handle on this test's store: a ``destinations/`` folder of its own, or a
    key prefix of its own on the session's Redis."""
    handles: list[DestinationStore] = []
    prefix = f"test-{uuid.uuid4().hex}"

    def open_() -> DestinationStore:
        handle: DestinationStore
        if request.param == "files":
            handle = FileDestinationStore(tmp_path / "destinations")
        else:
            import redis

            from clew.destination_store.redis import RedisDestinationStore

            url = request.getfixturevalue("redis_url")
            handle = RedisDestinationStore(redis.Redis.from_url(url), prefix)
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        handle.close()


@pytest.fixture
def store(open_store: OpenStore) -> DestinationStore:
    return open_store()


def test_settings_read_back_as_written(store: DestinationStore) -> None:
    assert store.read_all() == []
    where = store.put(CRM)
    assert where == store.where("crm") and "crm" in where
    (stored,) = store.read_all()
    assert stored.name == "crm" and stored.settings == CRM and stored.problem is None
    assert stored.origin == store.read_all()[0].origin  # stable from read to read


def test_a_name_is_taken_until_it_is_removed(store: DestinationStore) -> None:
    store.put(CRM)
    version = store.version()
    with pytest.raises(DestinationTakenError) as taken:
        store.put({**CRM, "url": "https://other.test/"})
    assert taken.value.where == store.where("crm")
    assert store.version() == version
    assert store.read_all()[0].settings == CRM
    store.put({**CRM, "url": "https://other.test/"}, replace=True)
    assert [s.settings for s in store.read_all()] == [{**CRM, "url": "https://other.test/"}]
    assert store.delete("crm") is not None
    assert store.delete("crm") is None
    assert store.read_all() == []
    store.put(CRM)
    assert [s.name for s in store.read_all()] == ["crm"]


def test_the_version_moves_with_every_change_and_only_then(store: DestinationStore) -> None:
    seen = [store.version()]
    assert store.version() == seen[0]
    changes: list[Callable[[], object]] = [
        lambda: store.put(CRM),
        lambda: store.put({**CRM, "batch_size": 6}, replace=True),
        lambda: store.put({**CRM, "name": "ads"}),
        lambda: store.delete("crm"),
    ]
    for change in changes:
        change()
        now = store.version()
        assert now not in seen and store.version() == now
        seen.append(now)
    store.delete("nothing")
    assert store.version() == seen[-1]


def test_what_one_handle_writes_another_reads_at_once(open_store: OpenStore) -> None:
    one, two = open_store(), open_store()
    before = two.version()
    one.put(CRM)
    assert two.version() != before
    assert [s.settings for s in two.read_all()] == [CRM]
    two.delete("crm")
    assert one.read_all() == []


def test_the_configured_destinations_check_what_is_stored(store: DestinationStore) -> None:
    destinations = Destinations(store)
    config = DestinationConfig(name="crm", url="https://crm.test/in", categories=("Ads",))
    destinations.save(config)
    with pytest.raises(DestinationExistsError, match="--replace"):
        destinations.save(config)
    store.put({"name": "bad", "url": "ftp://nowhere/"})
    found, problems = destinations.load()
    assert list(found.values()) == [config] and destinations.get("crm") == config
    (problem,) = problems.values()
    assert "http:// or https://" in problem
    assert destinations.stored_names() == {"crm", "bad"}
    with pytest.raises(UnknownDestinationError, match="'bad'"):
        destinations.get("bad")
    destinations.remove("crm")
    with pytest.raises(UnknownDestinationError, match="clew destinations list"):
        destinations.remove("crm")
