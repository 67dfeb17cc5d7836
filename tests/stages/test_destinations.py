"""The destinations stage under the stage runner: a change record the stage cannot route (it
nests deeper than the decoder goes) is set aside to the dlq, and every other profile's
records still reach the destination's receiver; while the shared store of destinations is
away, the stage routes to those it read last."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import msgspec
import pytest

from _support import wait_for
from clew._redis_shared import RedisUnreachableError
from clew.destination_store import FileDestinationStore, StoredDestination
from clew.destinations import (
    DestinationConfig,
    DestinationDirectory,
    Destinations,
    Outbox,
    destinations_dir,
    outbox_path,
)
from clew.dlq.records import STAGE_FAILURE, DeadLetter
from clew.log.base import Consumer, Log, Message, Record, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.stages.destinations import DestinationsStage
from clew.stages.runner import StageRunner
from clew.stages.setaside import StageLedger
from clew.topics import CHANGES_TOPIC, DLQ_TOPIC, EVENTS_TOPIC
from destinations._receiver import Receiver


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in (EVENTS_TOPIC, CHANGES_TOPIC, DLQ_TOPIC):
        log.create_topic(TopicSpec(topic, 1))
    yield log
    log.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _change(profile: str, consent: object = None) -> Message:
    doc = {"kind": "trait_changed", "profile_id": profile, "trait": "plan", "consent": consent}
    return Message(json.dumps(doc).encode(), key=profile.encode())


def test_a_change_the_stage_cannot_route_is_set_aside_and_other_profiles_are_delivered(
    log: Log, receiver: Receiver, tmp_path: Path
) -> None:
    config = DestinationConfig(
        name="crm", url=receiver.url, events=(), changes=("trait_changed",), max_batch_wait_ms=50
    )
    DestinationDirectory(destinations_dir(tmp_path)).save(config)
    stage = DestinationsStage(tmp_path, poll_s=0.05)
    ledger = StageLedger(tmp_path / "state.db")
    runner = StageRunner(log, stage, 50, ledger=ledger)
    deep = b'{"kind":"trait_changed","consent":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    log.append_sync(
        CHANGES_TOPIC,
        [_change("p1"), Message(deep, key=b"p2"), *(_change(f"p{i}") for i in range(3, 9))],
    )
    runner.start()
    try:
        wait_for(
            lambda: sum(len(r.batch) for r in receiver.requests if r.status == 200) == 7,
            timeout_s=60,
        )
    finally:
        runner.stop()
        stage.shutdown()
    delivered = [d["profile_id"] for r in receiver.requests for d in r.batch]
    assert sorted(delivered) == ["p1", *(f"p{i}" for i in range(3, 9))]
    [letter] = [msgspec.json.decode(r.value, type=DeadLetter) for r in log.read(DLQ_TOPIC, 0, 0)]
    assert (letter.reason, letter.stage, letter.topic) == (STAGE_FAILURE, "destinations", "changes")
    assert letter.message.startswith("RecursionError")
    assert letter.payload.encode() == deep
    assert ledger.trouble()["destinations"].set_aside_recent == 1
    ledger.close()


class _Away(FileDestinationStore):
    """Files that can be made unreachable, as the shared Redis is during an outage."""

    away = False

    def _check(self) -> None:
        if self.away:
            raise RedisUnreachableError("cannot reach Redis while reading destinations")

    def version(self) -> tuple[tuple[str, int, int], ...]:
        self._check()
        return super().version()

    def read_all(self) -> list[StoredDestination]:
        self._check()
        return super().read_all()


def test_the_stage_keeps_routing_to_what_it_read_while_the_shared_store_is_away(
    tmp_path: Path,
) -> None:
    store = _Away(destinations_dir(tmp_path))
    # Nothing listens on port 9; the sender's retries wait a minute, past this test.
    Destinations(store).save(
        DestinationConfig(name="d", url="http://127.0.0.1:9/", retry_initial_s=60)
    )
    stage = DestinationsStage(tmp_path, destinations=Destinations(store))
    consumer = cast(Consumer, _Commits())
    try:
        assert stage.destinations == ["d"]
        store.away = True
        time.sleep(0.6)  # past the stage's re-read interval
        stage.tick(consumer)
        assert stage.destinations == ["d"]
        now_ms = int(time.time() * 1000) + 1000
        event = json.dumps({"type": "track", "event": "E", "messageId": "m1"}).encode()
        stage.handle([Record(EVENTS_TOPIC, 0, 0, b"u", event, (), now_ms)], consumer)
        outbox = Outbox(outbox_path(tmp_path))
        try:
            assert outbox.waiting() == {"d": 1}
        finally:
            outbox.close()
        store.away = False
        Destinations(store).remove("d")

        def routes() -> list[str]:
            stage.tick(consumer)
            return stage.destinations

        wait_for(lambda: routes() == [], timeout_s=5)
    finally:
        stage.shutdown()


class _Commits:
    def commit(self, offsets: dict[tuple[str, int], int], produce: object = None) -> None:
        pass
