"""A deletion interrupted after the profile graph was removed, run with the real erasure and
verification on the embedded log, the lake and the SQLite serving store: the retry still
erases the events of every identifier the first attempt recorded, not only those of the
identifier the request named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from clew.backends import open_log
from clew.config import LakeSettings, Settings
from clew.lake.query import Lake
from clew.log.base import Log, Message
from clew.privacy.erase import erase
from clew.privacy.runner import Operations, PrivacyRunner, default_operations
from clew.privacy.subject import Subject
from clew.privacy.verify import verify
from clew.stages.lake_sink import LakeSinkStage
from clew.store import Provenance, SQLiteProfileStore

ADA_USER = "user-ada-1815"
ADA_EMAIL = "ada@analytical.test"
ADA_PHONE = "anon-ada-phone-7f3a"
BOB_USER = "user-bob-2001"


def _event(mid: str, **who: Any) -> Message:
    doc = {
        "type": "identify",
        "messageId": mid,
        "timestamp": "2026-03-01T10:00:00.000Z",
        "receivedAt": "2026-03-01T10:00:01.000Z",
        "sourceId": "web",
        **who,
    }
    return Message(orjson.dumps(doc), key=mid.encode())


def _sink(settings: Settings, log: Log) -> None:
    stage = LakeSinkStage(settings.lake_path, LakeSettings())
    consumer = log.consumer("lake", ["events"])
    stage.on_assign(consumer, consumer.assignment())
    while records := consumer.poll(100, 0.05):
        stage.handle(records, consumer)
    stage.close(consumer)
    consumer.close()


def _events_holding(log: Log, value: str) -> int:
    spec = log.topics()["events"]
    return sum(
        value.encode() in rec.value
        for p in range(spec.partitions)
        for rec in log.read("events", p, 0, 1000)
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def world(settings: Settings) -> Iterator[tuple[Log, SQLiteProfileStore]]:
    """Ada's user id and her phone's events are separate; only her profile links them."""
    log = open_log(settings)
    store = SQLiteProfileStore(settings.profiles_path)
    log.append_sync(
        "events",
        [
            _event("a1", userId=ADA_USER),
            _event("a2", anonymousId=ADA_PHONE, traits={"email": ADA_EMAIL}),
            _event("b1", userId=BOB_USER),
        ],
    )
    _sink(settings, log)
    for id_type, value in (
        ("user_id", ADA_USER),
        ("email", ADA_EMAIL),
        ("anonymous_id", ADA_PHONE),
    ):
        store.attach("p-ada", id_type, value, Provenance("m", "web", 1))
    store.attach("p-bob", "user_id", BOB_USER, Provenance("m", "web", 1))
    yield log, store
    store.close()
    log.close()


def test_a_retry_after_the_profile_graph_went_erases_every_recorded_identifier(
    settings: Settings,
    world: tuple[Log, SQLiteProfileStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log, store = world
    monkeypatch.setattr("clew.privacy.runner.RETRY_DELAYS_S", (0.0, 0.0))
    attempts: list[Subject] = []

    def interrupted_erase(settings: Settings, subject: Subject, **kwargs: Any) -> Any:
        attempts.append(subject)
        if len(attempts) == 1:
            # The first attempt dies right after removing the profile graph.
            store.delete_profile("p-ada")
            raise RuntimeError("the lake was unavailable")
        return erase(settings, subject, **kwargs)

    real = default_operations(settings)
    ops = Operations(real.resolve_subject, interrupted_erase, verify)
    runner = PrivacyRunner(settings, log=log, store=store, settle_s=None, operations=ops)
    try:
        request = runner.requests.create("delete", f"user_id:{ADA_USER}", requested_by="cli")
        done = runner.run(request.id)
    finally:
        runner.close()

    assert done.status == "finished", done.audit
    assert done.attempts == 2
    everyone = {("user_id", ADA_USER), ("email", ADA_EMAIL), ("anonymous_id", ADA_PHONE)}
    assert set(attempts[1].identifiers) == everyone
    assert _events_holding(log, ADA_PHONE) == 0 and _events_holding(log, ADA_USER) == 0
    assert _events_holding(log, BOB_USER) == 1
    lake = Lake(settings.lake_path)
    assert lake.sql("SELECT count(*) FROM events").rows[0][0] == 1
    ada = Subject(("p-ada",), tuple(sorted(everyone)))
    assert verify(settings, ada, store=store, log=log).clean
