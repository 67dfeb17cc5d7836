"""The suppression list and its in-memory checker: which events match, grouping by request,
and how fast a change reaches a checker in another process; each test runs on the list in
``privacy.db`` and on the list in a real Redis (used when the serving store is Redis)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clew.events import Event
from clew.identity.rules import IdentityRules
from clew.privacy._salt import identifier_hash
from clew.privacy.suppression import (
    RELOAD_S,
    ListWriter,
    SuppressedHash,
    Suppression,
    SuppressionList,
)
from clew.suppression_list._redis import RedisSuppressionList

SALT = b"test-salt"


def entry(id_type: str, value: str) -> SuppressedHash:
    return SuppressedHash(id_type, identifier_hash(SALT, id_type, value))


def event(**fields: Any) -> Event:
    base: dict[str, Any] = {
        "type": "track",
        "message_id": "m",
        "timestamp": "2024-01-01T00:00:00.000Z",
        "received_at": "2024-01-01T00:00:00.000Z",
        "source_id": "s",
    }
    return Event(**{**base, **fields})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "privacy.db"


_prefixes = iter(range(1_000_000))


def _redis_list(url: str, prefix: str) -> RedisSuppressionList:
    import redis

    from clew.store._redis_route import cluster_client

    cluster = url.startswith("cluster+")
    if cluster:
        return RedisSuppressionList(cluster_client(url.removeprefix("cluster+"), [])(), prefix)
    return RedisSuppressionList(redis.Redis.from_url(url), prefix)


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(backend, where)``: a file path, or a Redis URL (``cluster+`` in front for a
    Redis Cluster) and a fresh key prefix."""
    if request.param == "sqlite":
        return ("sqlite", str(request.getfixturevalue("path")))
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = "cluster+" + request.getfixturevalue("redis_cluster_service").url
    return ("redis", f"{url} supp-test-{next(_prefixes)}")


def _open_writer(backend: tuple[str, str]) -> ListWriter:
    kind, where = backend
    if kind == "sqlite":
        return SuppressionList(Path(where))
    url, prefix = where.split(" ")
    return _redis_list(url, prefix)


@pytest.fixture
def writer(backend: tuple[str, str]) -> Iterator[ListWriter]:
    w = _open_writer(backend)
    yield w
    w.close()


@pytest.fixture
def checker(backend: tuple[str, str], writer: ListWriter) -> Iterator[Suppression]:
    kind, where = backend
    if kind == "sqlite":
        c = Suppression(Path(where), SALT, IdentityRules())
    else:
        url, prefix = where.split(" ")
        c = Suppression(_redis_list(url, prefix), SALT, IdentityRules())
    yield c
    c.close()


def test_every_identifier_kind_of_an_event_is_checked(
    writer: ListWriter, checker: Suppression
) -> None:
    assert not checker.is_suppressed(event(user_id="u1"))
    writer.add("r1", [entry("email", "Ada@X.test"), entry("user_id", "u1")], temporary=False)
    writer.add("r2", [entry("anonymous_id", "dev-2"), entry("crm", "C-9")], temporary=False)
    checker.refresh(force=True)
    assert checker.is_suppressed(event(user_id="u1"))
    assert checker.is_suppressed(event(anonymous_id="other", traits={"email": " ada@x.TEST"}))
    assert checker.is_suppressed(
        event(anonymous_id="x", context={"traits": {"email": "ada@x.test"}})
    )
    assert checker.is_suppressed(event(anonymous_id="dev-2"))
    ext = {"externalIds": [{"type": "crm", "id": "C-9", "collection": "users"}]}
    assert checker.is_suppressed(event(anonymous_id="x", context=ext))
    assert checker.is_suppressed(event(type="alias", user_id="new", previous_id="dev-2"))
    assert not checker.is_suppressed(event(user_id="u2", traits={"email": "bob@x.test"}))


def test_raw_events_as_the_collector_sees_them(writer: ListWriter, checker: Suppression) -> None:
    writer.add("r1", [entry("email", "ada@x.test"), entry("user_id", "42")], temporary=False)
    checker.refresh(force=True)
    raw = msgspec.json.encode
    assert checker.is_suppressed_raw(raw({"userId": 42, "event": "x"}), "track")
    assert checker.is_suppressed_raw(
        raw({"type": "identify", "anonymousId": "a", "traits": {"email": "ADA@x.test"}}), "batch"
    )
    body = raw({"batch": [], "context": {"traits": {"email": "ada@x.test"}}})
    shared = Suppression.batch_context(body)
    assert checker.is_suppressed_raw(raw({"type": "track", "anonymousId": "a"}), "batch", shared)
    assert not checker.is_suppressed_raw(raw({"type": "track", "anonymousId": "a"}), "batch")
    assert not checker.is_suppressed_raw(b"{not json", "track")


def test_unsuppress_lifts_everything_suppressed_together_but_not_running_deletions(
    writer: ListWriter, checker: Suppression
) -> None:
    writer.add("r1", [entry("email", "ada@x.test"), entry("user_id", "u1")], temporary=False)
    writer.add("r2", [entry("user_id", "u1")], temporary=True)
    writer.add("r3", [entry("user_id", "bob")], temporary=False)
    assert writer.counts() == {"permanent": 3}
    # By the email alone: request r1 is lifted whole (the user id too), r2 is a deletion.
    assert writer.lift([entry("email", "ada@x.test").hash]) == 2
    assert writer.counts() == {"permanent": 1, "temporary": 1}
    checker.refresh(force=True)
    assert checker.is_suppressed(event(user_id="u1"))
    assert not checker.is_suppressed(event(traits={"email": "ada@x.test"}, anonymous_id="a"))
    assert writer.lift_request("r2") == 1
    checker.refresh(force=True)
    assert not checker.is_suppressed(event(user_id="u1"))
    assert checker.is_suppressed(event(user_id="bob"))


def test_a_checker_sees_changes_within_the_reload_interval_without_querying_per_event(
    writer: ListWriter, checker: Suppression, path: Path
) -> None:
    assert not checker.active
    writer.add("r1", [entry("user_id", "u1")], temporary=False)
    deadline = time.monotonic() + RELOAD_S + 0.2
    while not checker.is_suppressed(event(user_id="u1")):
        assert time.monotonic() < deadline, "the checker did not reload in time"
        time.sleep(0.02)
    # Between reloads the checker answers from memory: a change is not seen at once.
    writer.lift_request("r1")
    assert checker.is_suppressed(event(user_id="u1"))
    time.sleep(RELOAD_S + 0.05)
    assert not checker.is_suppressed(event(user_id="u1"))
