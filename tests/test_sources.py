"""The catalog: scoped, expiring, revocable tokens; write keys rotated with a grace period or
removed; source names unique ignoring case; a catalog from before scopes migrated in place;
one catalog shared by every machine on Redis, and a ``meta.db`` copied into it.

Two :class:`Catalog` objects on one store stand for two processes (each has its own
connection and its own key cache): on one ``meta.db``, or on one Redis as two machines
would share it."""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clew.catalog_store import SqliteCatalogStore, copy_catalog
from clew.sources import (
    ADMIN,
    DEFAULT_SCOPES,
    DEFAULT_SOURCE,
    KEY_RECHECK_S,
    PROFILES,
    SCOPES,
    SQL,
    Catalog,
    CatalogError,
    parse_scopes,
)

BACKENDS = ["sqlite", "redis"]

OpenCatalog = Callable[[], Catalog]


@pytest.fixture(params=BACKENDS)
def open_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenCatalog]:
    """Opens another handle on this test's catalog: ``meta.db`` in the test's directory, or a
    key prefix of its own on the session's Redis."""
    handles: list[Catalog] = []
    prefix = f"test-{uuid.uuid4().hex}"

    def open_() -> Catalog:
        if request.param == "sqlite":
            handle = Catalog(SqliteCatalogStore(tmp_path / "meta.db"))
        else:
            import redis

            from clew.catalog_store.redis import RedisCatalogStore

            url = request.getfixturevalue("redis_url")
            handle = Catalog(RedisCatalogStore(redis.Redis.from_url(url), prefix))
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        handle.close()


@pytest.fixture
def two(open_catalog: OpenCatalog) -> tuple[Catalog, Catalog]:
    """Two handles on one catalog, as two processes (or machines sharing it) would hold."""
    return open_catalog(), open_catalog()


def _seconds_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, "never happened"
        time.sleep(0.01)
    return time.monotonic() - start


def test_scopes_default_to_reads_and_all_means_every_scope() -> None:
    assert parse_scopes([]) == DEFAULT_SCOPES == (SQL, PROFILES)
    assert parse_scopes(["all"]) == SCOPES
    assert parse_scopes(["admin,SQL", "admin"]) == (SQL, ADMIN)
    with pytest.raises(CatalogError, match="unknown scope write; choose from sql"):
        parse_scopes(["write"])


def test_a_token_holds_its_scopes_until_it_expires(two: tuple[Catalog, Catalog]) -> None:
    a, b = two
    reader = a.create_token("reader")
    found = b.token_for(reader)
    assert found is not None and found.scopes == {SQL, PROFILES} and not found.legacy
    short = a.create_token("short", [ADMIN], expires_in_s=0.2)
    assert b.verify_token(short)
    time.sleep(0.25)
    assert not b.verify_token(short)
    with pytest.raises(CatalogError, match="already exists"):
        a.create_token("reader", ["all"])


def test_a_revoked_token_fails_at_once_in_every_process(two: tuple[Catalog, Catalog]) -> None:
    a, b = two
    token = a.create_token("ci", ["all"])
    assert b.verify_token(token)
    a.revoke_token("ci")
    assert not b.verify_token(token) and b.token_for(token) is None
    with pytest.raises(CatalogError, match="no token named 'ci'"):
        a.revoke_token("ci")


def test_last_use_is_recorded_and_the_secret_never_is(two: tuple[Catalog, Catalog]) -> None:
    a, b = two
    token = a.create_token("ci")
    assert a.tokens()[0].last_used_at is None
    before = time.time()
    assert a.verify_token(token)
    used = b.tokens()[0].last_used_at
    assert used is not None and used >= before
    assert b.token_named("ci") == b.tokens()[0]
    assert token not in repr(a.store.token_hashes())


def test_meta_db_keeps_no_secret(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "meta.db")
    token = catalog.create_token("ci")
    catalog.close()
    assert token.encode() not in (tmp_path / "meta.db").read_bytes()


def test_a_catalog_from_before_scopes_keeps_its_tokens_working(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE sources (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                              write_key TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
        CREATE TABLE tokens (name TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE,
                             created_at REAL NOT NULL);
        """
    )
    old.execute("INSERT INTO sources VALUES ('src_1', 'web', 'old-web-key', 1.0)")
    digest = hashlib.sha256(b"clew_from_last_year").hexdigest()
    old.execute("INSERT INTO tokens VALUES ('ops', ?, 2.0)", (digest,))
    old.commit()
    old.close()

    catalog = Catalog(path)
    try:
        found = catalog.token_for("clew_from_last_year")
        assert found is not None and found.legacy and found.scopes == set(SCOPES)
        src = catalog.source_for_key("old-web-key")
        assert src is not None and src.name == "web"
        new = catalog.create_token("new")
        assert catalog.token_for(new).scopes == set(DEFAULT_SCOPES)  # type: ignore[union-attr]
    finally:
        catalog.close()
    Catalog(path).close()  # a second opening finds the schema migrated already


def test_a_rotated_key_stops_within_a_second_everywhere(two: tuple[Catalog, Catalog]) -> None:
    a, b = two
    old = a.create_source("web").write_key
    assert b.source_for_key(old) is not None  # cached by the other process
    new = a.rotate_write_key("WEB").write_key
    assert new != old and b.source_for_key(new) is not None
    assert _seconds_until(lambda: b.source_for_key(old) is None) <= KEY_RECHECK_S + 0.1 < 1


def test_the_old_key_works_through_the_grace_period_only(two: tuple[Catalog, Catalog]) -> None:
    a, b = two
    old = a.create_source("web").write_key
    rotated = a.rotate_write_key("web", grace_s=0.6)
    current = b.source_for_key(rotated.write_key)
    assert current is not None and b.source_for_key(old) == current
    waited = _seconds_until(lambda: b.source_for_key(old) is None)
    assert 0.45 <= waited <= 0.6 + KEY_RECHECK_S
    assert b.source_for_key(rotated.write_key) is not None


def test_a_removed_source_keeps_its_events_name_but_not_its_key(
    two: tuple[Catalog, Catalog],
) -> None:
    a, b = two
    src = a.create_source("web")
    a.rotate_write_key("web", grace_s=3600)
    assert b.source_for_key(src.write_key) is not None
    a.remove_source("web")
    assert _seconds_until(lambda: b.source_for_key(src.write_key) is None) < 1
    assert [s.name for s in b.sources(include_removed=False)] == []
    assert [s.id for s in b.sources()] == [src.id]  # old events still name their source
    with pytest.raises(CatalogError, match="was removed; its name stays taken"):
        a.create_source("Web")
    with pytest.raises(CatalogError, match="already removed"):
        a.remove_source("web")


def test_source_names_are_unique_ignoring_case(open_catalog: OpenCatalog) -> None:
    catalog = open_catalog()
    catalog.create_source("Web")
    with pytest.raises(CatalogError, match=r"'Web' already exists .*ignoring case"):
        catalog.create_source("web")
    with pytest.raises(CatalogError, match="no source named 'ios'"):
        catalog.rotate_write_key("ios")
    catalog.create_source("ios", "ios-key-1")
    with pytest.raises(CatalogError, match="already used by another source"):
        catalog.create_source("android", "ios-key-1")
    with pytest.raises(CatalogError, match="already used by another source"):
        catalog.rotate_write_key("Web", write_key="ios-key-1")


def test_creating_a_source_again_with_its_own_key_is_a_no_op(two: tuple[Catalog, Catalog]) -> None:
    """What a deploy pipeline runs on every machine: the second run changes nothing."""
    a, b = two
    first = a.create_source("web", "web-key-123")
    assert b.create_source("web", "web-key-123") == first
    with pytest.raises(CatalogError, match="already exists"):
        b.create_source("web", "another-key-1")


def test_every_process_gets_one_default_source(two: tuple[Catalog, Catalog]) -> None:
    a, b = two
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda i: (a, b)[i % 2].ensure_source(DEFAULT_SOURCE), range(16)))
    assert len({(s.id, s.write_key) for s in found}) == 1
    assert [s.name for s in a.sources()] == [DEFAULT_SOURCE]


def test_a_meta_db_copied_into_redis_keeps_ids_keys_and_tokens(
    tmp_path: Path, redis_url: str
) -> None:
    import redis

    from clew.catalog_store.redis import RedisCatalogStore

    old = Catalog(tmp_path / "meta.db")
    web = old.create_source("web", "web-key-123")
    old.rotate_write_key("web", grace_s=3600, write_key="web-key-456")
    gone = old.create_source("gone", "gone-key-1")
    old.remove_source("gone")
    token = old.create_token("ops", ["all"], expires_in_s=3600)
    assert old.verify_token(token)
    shared = Catalog(RedisCatalogStore(redis.Redis.from_url(redis_url), f"t-{uuid.uuid4().hex}"))
    try:
        assert copy_catalog(old.store, shared.store) == (2, 1, [])
        assert copy_catalog(old.store, shared.store) == (2, 1, [])  # a second run: no change
        assert [(s.id, s.name, s.write_key) for s in shared.sources()] == [
            (web.id, "web", "web-key-456"),
            (gone.id, "gone", "gone-key-1"),
        ]
        assert shared.source_for_key("web-key-123") == shared.source_for_key("web-key-456")
        assert shared.source_for_key("gone-key-1") is None
        copied = shared.token_for(token)
        assert copied is not None and copied.scopes == set(SCOPES)
        assert copied.expires_at == old.token_named("ops").expires_at  # type: ignore[union-attr]
        assert copied.last_used_at is not None
    finally:
        old.close()
        shared.close()


def test_an_unreachable_shared_catalog_is_a_503_but_known_keys_keep_working(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from clew._errors import ServiceUnavailableError
    from clew.background import free_port
    from clew.catalog_store import CatalogUnavailableError
    from clew.catalog_store.redis import RedisCatalogStore

    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    with pytest.raises(ServiceUnavailableError, match="cannot reach Redis"):
        Catalog(RedisCatalogStore(nowhere, "t")).sources()

    catalog = Catalog(RedisCatalogStore(redis.Redis.from_url(redis_url), f"t-{uuid.uuid4().hex}"))
    try:
        web = catalog.create_source("web", "web-key-123")
        assert catalog.source_for_key("web-key-123") == web

        def down(write_key: str, now: float) -> None:
            raise CatalogUnavailableError("cannot reach Redis")

        monkeypatch.setattr(catalog.store, "source_for_key", down)
        time.sleep(KEY_RECHECK_S)
        assert catalog.source_for_key("web-key-123") == web  # known before the outage
        with pytest.raises(CatalogUnavailableError):
            catalog.source_for_key("another-key-1")
    finally:
        catalog.close()
