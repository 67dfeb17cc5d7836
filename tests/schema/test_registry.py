"""The registry keeps every version durably and immutably, versions them with SchemaVer and
refuses incompatible ones with every breaking change listed."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clew.schema import (
    Bump,
    ChangeKind,
    Compatibility,
    Enforcement,
    IncompatibleSchemaError,
    InvalidSchemaError,
    InvalidSubjectError,
    SchemaRegistry,
    SchemaVer,
    SubjectNotFoundError,
    SubjectUpdate,
)
from clew.schema._registry_db import SharedDatabase

ORDER = "track:Order Completed"


def closed(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "additionalProperties": False}


V1 = closed(order_id={"type": "string"})
V2 = closed(order_id={"type": "string"}, coupon={"type": "string"})


OpenRegistry = Callable[[], SchemaRegistry]


@pytest.fixture(params=["sqlite", "redis"])
def open_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenRegistry]:
    """Opens another handle on this test's registry: ``registry.db``, or one shared through
    the session's Redis under a key prefix of the test's own (as every machine would)."""
    handles: list[SchemaRegistry] = []
    prefix = f"reg-{uuid.uuid4().hex}"

    def open_() -> SchemaRegistry:
        if request.param == "sqlite":
            handle = SchemaRegistry(tmp_path / "registry.db")
        else:
            import redis

            from clew.definition_store._redis import RedisStorage

            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            handle = SchemaRegistry(SharedDatabase(RedisStorage(client, prefix, "reg")))
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        handle.close()


@pytest.fixture
def registry(open_registry: OpenRegistry) -> SchemaRegistry:
    return open_registry()


@pytest.fixture
def file_registry(tmp_path: Path) -> Iterator[SchemaRegistry]:
    reg = SchemaRegistry(tmp_path / "registry.db")
    yield reg
    reg.close()


def test_versions_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "data" / "registry.db"
    with SchemaRegistry(path) as reg:
        reg.publish("web", ORDER, V1)
        reg.publish("web", ORDER, V2)
    with SchemaRegistry(path) as reg:
        versions = reg.versions("web", ORDER)
        assert [(v.version, str(v.schemaver), v.schema) for v in versions] == [
            (1, "1-0-0", V1),
            (2, "1-0-1", V2),
        ]
        assert reg.sources() == ["web"]


def test_database_is_in_wal_mode(file_registry: SchemaRegistry) -> None:
    assert file_registry.path is not None
    conn = sqlite3.connect(file_registry.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_republishing_the_latest_schema_is_a_no_op(registry: SchemaRegistry) -> None:
    first = registry.publish("web", ORDER, V1)
    revision = registry.revision("web")
    again = registry.publish("web", ORDER, dict(reversed(list(V1.items()))))
    assert first.created and not again.created
    assert again.version == first.version
    assert len(registry.versions("web", ORDER)) == 1
    assert registry.revision("web") == revision


def test_published_versions_cannot_be_changed(file_registry: SchemaRegistry) -> None:
    registry = file_registry
    registry.publish("web", ORDER, V1)
    assert registry.path is not None
    conn = sqlite3.connect(registry.path)
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE versions SET schema = '{}'")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("DELETE FROM versions")
    conn.close()
    assert registry.get("web", ORDER, 1).schema == V1


@pytest.mark.parametrize(
    ("new", "bump", "schemaver"),
    [
        (V2, Bump.ADDITION, "1-0-1"),
        ({**V1, "additionalProperties": True}, Bump.ADDITION, "1-0-1"),
        (closed(order_id={"type": "string", "maxLength": 5}), Bump.REVISION, "1-1-0"),
        (closed(order_id={"type": "integer"}), Bump.REVISION, "1-1-0"),
        ({**V2, "required": ["coupon"]}, Bump.MODEL, "2-0-0"),
        ({**closed(order_id={"type": "integer"}), "required": ["order_id"]}, Bump.MODEL, "2-0-0"),
    ],
)
def test_schemaver_follows_what_the_change_does_to_old_data(
    registry: SchemaRegistry, new: dict[str, Any], bump: Bump, schemaver: str
) -> None:
    registry.publish("web", ORDER, V1, compatibility=Compatibility.NONE)
    published = registry.publish("web", ORDER, new)
    assert (published.version.bump, str(published.version.schemaver)) == (bump, schemaver)


def test_incompatible_version_is_refused_with_every_change(registry: SchemaRegistry) -> None:
    registry.publish("web", ORDER, V2)
    breaking = {**closed(order_id={"type": "integer"}), "required": ["order_id"]}
    with pytest.raises(IncompatibleSchemaError) as refused:
        registry.publish("web", ORDER, breaking)
    err = refused.value
    assert [(s, c.path, c.kind) for s, c in err.changes] == [
        (ORDER, "properties.order_id", ChangeKind.TYPE_CHANGED),
        (ORDER, "properties.coupon", ChangeKind.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL),
        (ORDER, "required.order_id", ChangeKind.PROPERTY_MADE_REQUIRED),
    ]
    assert err.modes == {ORDER: Compatibility.BACKWARD}
    assert "properties.coupon" in str(err) and "nothing was published" in str(err)
    assert [v.version for v in registry.versions("web", ORDER)] == [1]


def test_mode_is_per_subject(registry: SchemaRegistry) -> None:
    registry.publish("web", ORDER, V1, compatibility=Compatibility.FORWARD)
    registry.publish("web", "identify", V1)
    with pytest.raises(IncompatibleSchemaError) as refused:
        registry.publish("web", ORDER, V2)  # adding to a closed model breaks FORWARD
    assert refused.value.modes == {ORDER: Compatibility.FORWARD}
    assert registry.publish("web", "identify", V2).created  # BACKWARD allows it
    modes = {s.subject: s.compatibility for s in registry.subjects("web")}
    assert modes == {"identify": Compatibility.BACKWARD, ORDER: Compatibility.FORWARD}


def test_transitive_mode_checks_every_version(registry: SchemaRegistry) -> None:
    registry.publish("web", ORDER, closed(v={"type": "integer"}))
    registry.publish("web", ORDER, closed(v={"type": "string"}), compatibility=Compatibility.NONE)
    nullable = closed(v={"type": ["string", "null"]})
    assert registry.check("web", ORDER, nullable, compatibility=Compatibility.BACKWARD) == []
    (change,) = registry.check(
        "web", ORDER, nullable, compatibility=Compatibility.BACKWARD_TRANSITIVE
    )
    assert (change.kind, change.against) == (ChangeKind.TYPE_CHANGED, 1)


def test_publish_all_is_atomic(registry: SchemaRegistry) -> None:
    registry.publish_all("web", [SubjectUpdate(ORDER, V2), SubjectUpdate("identify", V1)])
    with pytest.raises(IncompatibleSchemaError):
        registry.publish_all(
            "web",
            [SubjectUpdate("identify", V2), SubjectUpdate(ORDER, V1)],
            enforcement=Enforcement.BLOCK_VIOLATIONS,
        )
    assert [v.version for v in registry.versions("web", "identify")] == [1]
    assert registry.settings("web").enforcement is Enforcement.ALLOW


def test_settings_and_retired_subjects(registry: SchemaRegistry) -> None:
    result = registry.publish_all(
        "web",
        [SubjectUpdate(ORDER, V1), SubjectUpdate("identify", V1, Compatibility.FULL)],
        enforcement=Enforcement.BLOCK_UNPLANNED_EVENTS,
        compatibility=Compatibility.FORWARD,
    )
    assert result.settings.enforcement is Enforcement.BLOCK_UNPLANNED_EVENTS
    assert result.settings.compatibility is Compatibility.FORWARD
    revision = result.settings.revision
    result = registry.publish_all("web", [SubjectUpdate(ORDER, V1)], retire_missing=True)
    assert result.retired == ("identify",)
    assert result.settings.revision > revision
    assert list(registry.latest_versions("web")) == [ORDER]
    assert [s.subject for s in registry.subjects("web", include_retired=True)] == [
        "identify",
        ORDER,
    ]
    back = registry.publish_all("web", [SubjectUpdate(ORDER, V1), SubjectUpdate("identify", V1)])
    assert [p.reactivated for p in back.published] == [False, True]
    assert sorted(registry.latest_versions("web")) == ["identify", ORDER]


def test_lookups_by_number_schemaver_and_latest(registry: SchemaRegistry) -> None:
    registry.publish("web", ORDER, V1)
    registry.publish("web", ORDER, V2)
    assert registry.get("web", ORDER).version == 2
    assert registry.get("web", ORDER, 1).schema == V1
    assert registry.get("web", ORDER, "1-0-1").schema == V2
    with pytest.raises(SubjectNotFoundError, match="has no version '7'"):
        registry.get("web", ORDER, "7")
    with pytest.raises(SubjectNotFoundError):
        registry.versions("web", "track:Nope")


def test_bad_subjects_and_schemas_are_refused(registry: SchemaRegistry) -> None:
    with pytest.raises(InvalidSubjectError, match="unknown subject"):
        registry.publish("web", "Order Completed", V1)
    with pytest.raises(InvalidSchemaError, match="type"):
        registry.publish("web", ORDER, {"type": "strnig"})
    with pytest.raises(InvalidSchemaError, match="points at nothing"):
        registry.publish("web", ORDER, {"$ref": "#/$defs/missing"})
    with pytest.raises(InvalidSchemaError, match="draft 2020-12"):
        registry.publish("web", ORDER, {"$schema": "http://json-schema.org/draft-07/schema#"})


def test_concurrent_publishers_never_both_pass_the_check(open_registry: OpenRegistry) -> None:
    open_registry().publish("web", ORDER, V1)
    outcomes: list[str] = []
    lock = threading.Lock()
    handles = [open_registry(), open_registry()]

    def publish(own: SchemaRegistry, schema: dict[str, Any]) -> None:
        try:
            own.publish("web", ORDER, schema)
            result = "published"
        except IncompatibleSchemaError:
            result = "refused"
        with lock:
            outcomes.append(result)

    # Each is compatible with V1 but the second to land removes what the first added.
    a = closed(order_id={"type": "string"}, a={"type": "string"})
    b = closed(order_id={"type": "string"}, b={"type": "string"})
    threads = [
        threading.Thread(target=publish, args=(h, s)) for h, s in zip(handles, (a, b), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["published", "refused"]
    assert len(open_registry().versions("web", ORDER)) == 2


def test_a_publish_reaches_every_handle_at_once(open_registry: OpenRegistry) -> None:
    """Two processes (or machines sharing a Redis): the reader's next call sees the push."""
    writer, reader = open_registry(), open_registry()
    assert reader.sources() == [] and reader.revision("web") == 0
    writer.publish_all("web", [SubjectUpdate(ORDER, V1)], enforcement=Enforcement.BLOCK_VIOLATIONS)
    assert reader.sources() == ["web"] and reader.revision("web") == writer.revision("web") > 0
    assert reader.get("web", ORDER).schema == V1
    assert reader.settings("web").enforcement == Enforcement.BLOCK_VIOLATIONS


def test_one_registry_object_is_shared_by_threads(registry: SchemaRegistry) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            registry.publish("web", f"track:Event {i}", V1)
            for _ in range(20):
                registry.latest_versions("web")
                registry.subjects("web")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(registry.latest_versions("web")) == 8


def test_schemaver_parse() -> None:
    assert SchemaVer.parse("2-10-0") == SchemaVer(2, 10, 0)
    with pytest.raises(ValueError, match="not a SchemaVer"):
        SchemaVer.parse("1.0.0")
