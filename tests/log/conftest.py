"""Fixtures for the log contract suite, parametrized by backend.

A backend is a factory that opens a :class:`Log` on one storage location; calling it again
opens another handle on the same storage (that is how the durability tests "restart"). To add
a backend, add its name to ``BACKENDS`` and a branch in ``open_log`` that yields handles
connected to the broker. Every test creates its own topics and groups with unique names, so
a shared broker works too: ``kafka`` runs against the session's real broker (the
``kafka_broker`` fixture of ``tests/conftest.py``), and skips, naming the install command,
where it cannot start (fails under CI). Handles and consumers are closed at teardown even
when a test closed them already, so ``close`` must be safe to call twice.

``UNSUPPORTED`` is the one place a backend may differ from the contract: a test listed for a
backend must fail on it with exactly the error and message named (a strict xfail with
``xfail_match``), so the refusal itself is tested and a backend that starts supporting the
operation is noticed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from _kafka import KafkaBroker
from clew.log.base import Consumer, Log, LogError, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.log.kafka import KafkaLog, UnsupportedOperationError

BACKENDS = ["embedded", "kafka"]

UNSUPPORTED: dict[str, dict[str, tuple[type[LogError], str]]] = {
    # Kafka removes a partition's oldest records or compacts by key, never one record in
    # the middle; see clew.log.kafka and docs/scale-out.md.
    "kafka": {
        "test_delete_where_removes_matching_records_only": (
            UnsupportedOperationError,
            "the Kafka log cannot physically delete single records of 'topic-",
        )
    },
}

OpenLog = Callable[[], Log]
NewTopic = Callable[..., str]
NewConsumer = Callable[..., Consumer]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("open_log") if callspec is not None else None
        expected = UNSUPPORTED.get(str(backend), {}).get(getattr(item, "originalname", ""))
        if expected is not None:
            error, message = expected
            reason = f"{backend} refuses this with {error.__name__}"
            item.add_marker(pytest.mark.xfail(raises=error, strict=True, reason=reason))
            item.add_marker(pytest.mark.xfail_match(re.escape(message)))


@pytest.fixture(params=BACKENDS)
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLog]:
    """Opens a handle on this test's log storage; every handle is closed after the test."""
    handles: list[Log] = []
    broker: KafkaBroker | None = None
    if request.param == "kafka":
        broker = request.getfixturevalue("kafka_broker")

    def open_() -> Log:
        if request.param == "embedded":
            handle: Log = EmbeddedLog(tmp_path / "log.db")
        elif broker is not None:
            handle = KafkaLog(broker.bootstrap, replication_factor=1)
        else:
            raise AssertionError(f"unknown log backend {request.param!r}")
        handles.append(handle)
        return handle

    yield open_
    for handle in reversed(handles):
        handle.close()


@pytest.fixture
def log(open_log: OpenLog) -> Log:
    return open_log()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def new_topic(log: Log) -> NewTopic:
    """Creates a topic with a unique name on ``log`` and returns the name."""

    def create(
        partitions: int = 1,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> str:
        name = unique("topic")
        log.create_topic(TopicSpec(name, partitions, retention_ms, retention_bytes))
        return name

    return create


@pytest.fixture
def group() -> str:
    return unique("group")


@pytest.fixture
def new_consumer(log: Log) -> Iterator[NewConsumer]:
    """Joins a group (on ``log`` unless another handle is given); closes members after."""
    members: list[Consumer] = []

    def join(group: str, topics: Sequence[str], on: Log | None = None) -> Consumer:
        member = (on or log).consumer(group, topics)
        members.append(member)
        return member

    yield join
    for member in reversed(members):
        member.close()
