"""The destinations stage under the stage runner: a change record the stage cannot route (it
nests deeper than the decoder goes) is set aside to the dlq, and every other profile's
records still reach the destination's receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from _support import wait_for
from clew.destinations import DestinationConfig, DestinationDirectory, destinations_dir
from clew.dlq.records import STAGE_FAILURE, DeadLetter
from clew.log.base import Log, Message, TopicSpec
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
