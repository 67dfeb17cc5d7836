"""Fixtures for the log contract suite, parametrized by backend.

A backend is a factory that opens a :class:`Log` on one storage location; calling it again
opens another handle on the same storage (that is how the durability tests "restart"). To add
a backend (Kafka), add its name to ``BACKENDS`` and a branch in ``open_log`` that yields
handles connected to the broker. Every test creates its own topics and groups with unique
names, so a shared broker works too. Handles and consumers are closed at teardown even when a
test closed them already, so ``close`` must be safe to call twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from clew.log.base import Consumer, Log, TopicSpec
from clew.log.embedded import EmbeddedLog

BACKENDS = ["embedded"]

OpenLog = Callable[[], Log]
NewTopic = Callable[..., str]
NewConsumer = Callable[..., Consumer]


@pytest.fixture(params=BACKENDS)
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLog]:
    """Opens a handle on this test's log storage; every handle is closed after the test."""
    handles: list[Log] = []

    def open_() -> Log:
        if request.param == "embedded":
            handle: Log = EmbeddedLog(tmp_path / "log.db")
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
