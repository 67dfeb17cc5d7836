"""Ada is forgotten on Kafka by crypto-shredding: `clew serve` in process on a real Kafka
broker with its serving store and data keys in a real Redis. Ada and Bob send events (one
batch holds both of them, one of Ada's events is dead-lettered); Ada asks to be deleted. The
request ends ``finished``, `clew privacy verify` finds zero traces in Kafka (no identifier in
clear, none of her records readable), Bob's records are all still readable, and a stage
reading the topics from the start skips Ada's records and commits past them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from _kafka import KafkaBroker
from _services import require_module
from _support import WRITE_KEY, make_settings, wait_for
from clew.backends import open_log
from clew.background import BackgroundServer
from clew.cli import app
from clew.config import LogSettings, PrivacySettings, Settings, StoreSettings
from clew.identity.identifiers import USER_ID
from clew.log.base import Record
from clew.log.shredding import ShreddingLog
from clew.topics import EVENTS_TOPIC, TOPICS

require_module("redis", "pip install -e '.[redis]'")

# Clew's fixed topic names: on the session's broker, emptied first.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("empty_kafka")]

ADA_EMAIL, ADA, ADA_PHONE = "ada.lovelace@analytical.test", "ada-1815", "ada-phone-7f3c"
BOB_EMAIL, BOB = "bob.babbage@engine.test", "bob-1791"


@pytest.fixture
def settings(tmp_path: Path, kafka_broker: KafkaBroker, redis_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        log=LogSettings(
            backend="kafka", bootstrap_servers=kafka_broker.bootstrap, replication_factor=1
        ),
        store=StoreSettings(
            backend="redis", redis_url=redis_url, redis_prefix=f"story-{uuid.uuid4().hex[:8]}"
        ),
        privacy=PrivacySettings(key_cache_s=1.0),
    )


def env_of(settings: Settings) -> dict[str, str]:
    return {
        "CLEW_LOG__BACKEND": "kafka",
        "CLEW_LOG__BOOTSTRAP_SERVERS": settings.log.bootstrap_servers,
        "CLEW_STORE__BACKEND": "redis",
        "CLEW_STORE__REDIS_URL": settings.store.redis_url,
        "CLEW_STORE__REDIS_PREFIX": settings.store.redis_prefix,
    }


def events() -> list[list[dict[str, Any]]]:
    ada = [
        {"type": "page", "name": "Home", "anonymousId": ADA_PHONE, "messageId": "a1"},
        {
            "type": "identify",
            "userId": ADA,
            "anonymousId": ADA_PHONE,
            "traits": {"email": ADA_EMAIL},
            "messageId": "a2",
        },
        {"type": "track", "event": "Order Completed", "userId": ADA, "messageId": "a3"},
        # No event name: dead-lettered with Ada's ids in its payload.
        {"type": "track", "userId": ADA, "messageId": "a4"},
    ]
    bob = [
        {"type": "identify", "userId": BOB, "traits": {"email": BOB_EMAIL}, "messageId": "b1"},
        {"type": "track", "event": "Order Completed", "userId": BOB, "messageId": "b2"},
    ]
    mixed = [
        {"type": "track", "event": "Viewed", "userId": ADA, "messageId": "m1"},
        {"type": "track", "event": "Viewed", "userId": BOB, "messageId": "m2"},
    ]
    return [ada, bob, mixed]


def read_topic(log: ShreddingLog, topic: str) -> list[Record]:
    out: list[Record] = []
    for p in range(log.topics()[topic].partitions):
        offset = 0
        while batch := log.read(topic, p, offset):
            out.extend(batch)
            offset = batch[-1].offset + 1
    return out


def mentions(records: list[Record], *values: str) -> list[Record]:
    return [r for r in records if any(v.encode() in r.value + (r.key or b"") for v in values)]


def test_ada_is_shredded_from_kafka_and_bob_stays(settings: Settings) -> None:
    with BackgroundServer(settings) as srv:
        srv.clew.catalog.create_source("tests", WRITE_KEY)
        assert isinstance(srv.clew.log, ShreddingLog)
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            for batch in events():
                r = http.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
                assert r.status_code == 200, r.text
        store = srv.clew._privacy_store
        wait_for(lambda: store.lookup(USER_ID, ADA) and store.lookup(USER_ID, BOB), 60, 0.2)
        before: dict[str, list[Record]] = {}

        def arrived() -> bool:
            before.update({t: read_topic(srv.clew.log, t) for t in TOPICS})
            # Ada's bad event is dead-lettered; her 4 good events and Bob's 3 are validated.
            return bool(mentions(before["dlq"], ADA)) and len(before[EVENTS_TOPIC]) >= 7

        wait_for(arrived, 60, 0.5)
        ada_events = len(mentions(before[EVENTS_TOPIC], ADA, ADA_PHONE))
        assert ada_events >= 4

        requests = srv.clew.privacy.requests
        request = requests.create("delete", f"email:{ADA_EMAIL}", requested_by="test")
        srv.clew.privacy.wake()
        wait_for(lambda: (requests.get(request.id) or request).ended, 120, 0.2)
        done = requests.get(request.id)
        assert done is not None and done.audit is not None

        assert done.status == "finished", json.dumps(done.audit, indent=1)
        (log_report,) = [s for s in done.audit["erasure"]["stores"] if s["store"] == "log"]
        assert log_report["error"] is None
        assert log_report["removed"] >= 3  # her identifiers' keys, a raw record's, a dead letter's
        assert "data key(s) destroyed" in log_report["detail"]
        assert any("Kafka, sealed" in c for c in done.audit["verify"]["checked"])

    # `clew privacy verify` as an operator runs it, in a fresh process state.
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "privacy",
            "verify",
            f"email:{ADA_EMAIL}",
            f"user_id:{ADA}",
            f"anonymous_id:{ADA_PHONE}",
            "--json",
            "--data-dir",
            str(settings.data_dir),
        ],
        env=env_of(settings),
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["clean"] and report["traces"] == []
    assert any("Kafka, sealed" in c and " 0 shredded" not in c for c in report["checked"])

    # Bob's records are all still readable; none of Ada's is.
    log = open_log(settings)
    assert isinstance(log, ShreddingLog)
    try:
        after = {t: read_topic(log, t) for t in TOPICS}
        assert mentions(after[EVENTS_TOPIC], BOB) == mentions(before[EVENTS_TOPIC], BOB)
        assert mentions(after["changes"], BOB) == mentions(before["changes"], BOB)
        for t in TOPICS:
            assert mentions(after[t], ADA, ADA_PHONE, ADA_EMAIL) == [], t

        # A stage that re-reads the events topic from the start skips Ada's records and
        # commits past them.
        group = f"reread-{uuid.uuid4().hex[:8]}"
        consumer = log.consumer(group, [EVENTS_TOPIC])
        skipped_before = log.shredded[EVENTS_TOPIC]
        try:
            got: list[Record] = []
            wanted = len(after[EVENTS_TOPIC])
            for _ in range(80):
                got += consumer.poll(500, 0.25)
                skipped = log.shredded[EVENTS_TOPIC] - skipped_before
                if len(got) >= wanted and skipped >= ada_events:
                    break
            consumer.commit()
            assert sorted(r.value for r in got) == sorted(r.value for r in after[EVENTS_TOPIC])
            assert log.shredded[EVENTS_TOPIC] - skipped_before == ada_events
            # Committed past every record, Ada's included: nothing left to read.
            assert log.lag(group, EVENTS_TOPIC).total == 0
            committed = log.committed(group, EVENTS_TOPIC)
            for p, end in log.end_offsets(EVENTS_TOPIC).items():
                assert log.read(EVENTS_TOPIC, p, committed.get(p, 0)) == []
                assert not end or committed.get(p, 0) > 0
        finally:
            consumer.close()
    finally:
        log.close()
