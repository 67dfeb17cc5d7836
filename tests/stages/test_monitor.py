"""The monitor stage over a real embedded log, with an accelerated clock: days of steady
shop traffic, then an app release whose ``order_completed`` events are dead-lettered."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import orjson
import pytest
from msgspec.structs import replace

from _support import wait_for
from clew.background import free_port
from clew.events import format_time
from clew.log.base import Consumer, Message, Record, TopicPartition, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.monitor import ALL_VERSIONS, VolumeAlert, decode_alert
from clew.stages.monitor import MonitorStage
from clew.stages.setaside import dead_letter

START = datetime(2026, 3, 2, tzinfo=UTC)
HOUR = timedelta(hours=1)
SOURCE = "shop"


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(tmp_path / "log.db")
    for topic in ("events", "dlq", "changes"):
        log.create_topic(TopicSpec(topic, 2))
    yield log
    log.close()


def _event(name: str, version: str, at: datetime, n: int) -> dict[str, object]:
    return {
        "type": "track",
        "event": name,
        "messageId": f"{name}-{version}-{at.isoformat()}-{n}",
        "userId": f"user-{n % 17}",
        "sourceId": SOURCE,
        "timestamp": format_time(at),
        "receivedAt": format_time(at + timedelta(seconds=1)),
        "properties": {"revenue": 10.0} if version == "1.0" else {},
        "context": {"app": {"version": version}, "library": {"name": "ios", "version": "7"}},
    }


def _dead(doc: dict[str, object], n: int) -> Message:
    row = {
        "reason": "schema_violation",
        "message": "properties: 'revenue' is a required property",
        "payload": orjson.dumps(doc).decode(),
        "source_id": SOURCE,
        "received_at": (datetime.fromisoformat(str(doc["receivedAt"]))).isoformat(),
        "raw_partition": 0,
        "raw_offset": n,
        "index": 0,
        "event_type": "track",
        "event_name": doc["event"],
    }
    return Message(value=orjson.dumps(row), key=SOURCE.encode())


def shop_hour(log: EmbeddedLog, start: datetime, *, released: bool, failing: bool) -> None:
    """One hour of traffic: 100 order_completed and 100 product_viewed. After the release 40%
    of users run app version 2.0; when ``failing``, its order_completed are dead-lettered."""
    events: list[Message] = []
    dead: list[Message] = []
    for name in ("order_completed", "product_viewed"):
        for n in range(100):
            version = "2.0" if released and n % 5 < 2 else "1.0"
            doc = _event(name, version, start + timedelta(seconds=n * 36), n)
            if failing and version == "2.0" and name == "order_completed":
                dead.append(_dead(doc, n))
            else:
                events.append(Message(value=orjson.dumps(doc), key=str(doc["userId"]).encode()))
    log.append_sync("events", events)
    if dead:
        log.append_sync("dlq", dead)


def drive(stage: MonitorStage, consumer: Consumer) -> None:
    """What the runner does, until the stage has seen everything and ticked idle once."""
    while True:
        records = consumer.poll(500, 0.01)
        if records:
            stage.handle(records, consumer)
        stage.tick(consumer)
        if not records:
            return


class Monitor:
    """A monitor stage with its consumer; ``restart`` replaces both, like a new process."""

    def __init__(
        self, log: EmbeddedLog, path: Path, clock: FakeClock, webhook_url: str | None = None
    ) -> None:
        self.log, self.path, self.clock, self.webhook_url = log, path, clock, webhook_url
        self._start()

    def _start(self) -> None:
        self.stage = MonitorStage(self.path, clock=self.clock, webhook_url=self.webhook_url)
        self.consumer: Consumer = self.log.consumer("monitor", ["events", "dlq"])
        self.stage.on_assign(self.consumer, self.consumer.assignment())

    def hour(self, start: datetime, *, released: bool = False, failing: bool = False) -> None:
        shop_hour(self.log, start, released=released, failing=failing)
        self.clock.now = start + HOUR + timedelta(minutes=6)
        drive(self.stage, self.consumer)

    def stop(self) -> None:
        self.stage.close(self.consumer)
        self.stage.shutdown()
        self.consumer.close()

    def restart(self) -> None:
        self.stop()
        self._start()


def alerts(log: EmbeddedLog) -> list[VolumeAlert]:
    out: list[VolumeAlert] = []
    for p in range(2):
        out.extend(decode_alert(r.value) for r in log.read("changes", p, 0, 10_000))
    return sorted(out, key=lambda a: (a.bucket_start, a.app_version))


class _Crashing(Consumer):
    """The process dies at its first log commit (``publishing``: the first that appends)."""

    def __init__(self, inner: Consumer, *, publishing: bool = False) -> None:
        self._inner = inner
        self._publishing = publishing

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        if self._publishing and not produce:
            self._inner.commit(offsets, produce)
            return
        raise RuntimeError("killed")

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        return self._inner.poll(max_records, timeout_s)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._inner.seek(topic, partition, offset)

    def assignment(self) -> list[TopicPartition]:
        return self._inner.assignment()

    def close(self) -> None:
        self._inner.close()


def test_a_failing_release_is_alerted_once_naming_its_app_version(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    monitor = Monitor(log, tmp_path / "monitor.db", clock)
    days = 3
    for h in range(days * 24):
        monitor.hour(START + h * HOUR)
    assert alerts(log) == []
    status = monitor.stage.status()
    assert status.series == {"ok": 4} and status.alerting == []

    release = START + days * 24 * HOUR
    monitor.hour(release, released=True, failing=True)
    monitor.hour(release + HOUR, released=True, failing=True)
    monitor.restart()
    monitor.hour(release + 2 * HOUR, released=True, failing=True)

    found = alerts(log)
    assert [(a.event_name, a.app_version) for a in found] == [
        ("order_completed", ALL_VERSIONS),
        ("order_completed", "2.0"),
    ]
    total, version = found
    assert version.bucket_start == format_time(release)
    assert version.bucket_end == format_time(release + HOUR)
    assert (version.direction, version.signals) == ("drop", ["dlq_share"])
    assert (version.expected, version.observed, version.change_pct) == (40, 0, -100.0)
    assert (version.dlq_count, version.top_dlq_reason) == (40, "schema_violation")
    assert version.top_dlq_message is not None and "revenue" in version.top_dlq_message
    assert version.top_dlq_app_version == "2.0"
    assert (total.direction, total.signals) == ("drop", ["volume", "dlq_share"])
    assert (total.expected, total.observed, total.change_pct) == (100, 60, -40.0)
    assert (total.baseline, total.top_dlq_app_version) == ("seasonal", "2.0")
    assert total.detected_at == format_time(release + HOUR + timedelta(minutes=6))

    status = monitor.stage.status()
    assert status.alerts_total == {("volume", "drop"): 1, ("dlq_share", "drop"): 1}
    # Still failing: the total is in an ongoing drop; 1.0 lost users to 2.0, not events.
    ongoing = {(s.key.app_version, s.status) for s in status.alerting}
    assert ongoing == {(ALL_VERSIONS, "ongoing")}
    assert status.series["version_shift"] == 2
    assert status.records_total == {"events": 2 * 100 * (days * 24 + 3) - 3 * 40, "dlq": 120}
    monitor.stop()


def test_a_crash_after_storing_counts_does_not_count_twice(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    monitor = Monitor(log, tmp_path / "monitor.db", clock)
    for h in range(30):
        monitor.hour(START + h * HOUR)
    shop_hour(log, START + 30 * HOUR, released=False, failing=False)
    with pytest.raises(RuntimeError, match="killed"):
        monitor.stage.handle(monitor.consumer.poll(500, 0.1), _Crashing(monitor.consumer))
    monitor.restart()
    clock.now = START + 31 * HOUR + timedelta(minutes=6)
    drive(monitor.stage, monitor.consumer)
    # Counted twice, hour 30 would be a 100% spike of every series.
    status = monitor.stage.status()
    assert status.judged_through == START + 30 * HOUR
    assert status.alerting == [] and status.series == {"ok": 4}
    assert status.records_total["events"] == 31 * 200
    assert alerts(log) == []
    monitor.stop()


def test_an_hour_is_judged_only_after_its_grace_period(log: EmbeddedLog, tmp_path: Path) -> None:
    clock = FakeClock(START)
    monitor = Monitor(log, tmp_path / "monitor.db", clock)
    shop_hour(log, START, released=True, failing=True)
    clock.now = START + HOUR + timedelta(minutes=4)
    drive(monitor.stage, monitor.consumer)
    assert alerts(log) == []
    clock.now = START + HOUR + timedelta(minutes=5)
    drive(monitor.stage, monitor.consumer)
    assert [a.app_version for a in alerts(log)] == [ALL_VERSIONS, "2.0"]
    monitor.stop()


class _Receiver:
    """A webhook receiver on 127.0.0.1 that answers each POST with the next status."""

    def __init__(self, statuses: list[int]) -> None:
        self.bodies: list[dict[str, object]] = []
        self.statuses = statuses
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.bodies.append(json.loads(body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/clew"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_webhook_gets_the_alert_json_after_a_retry(log: EmbeddedLog, tmp_path: Path) -> None:
    receiver = _Receiver([503])
    clock = FakeClock(START)
    monitor = Monitor(log, tmp_path / "monitor.db", clock, webhook_url=receiver.url)
    try:
        monitor.hour(START, released=True, failing=True)
        wait_for(lambda: len(receiver.bodies) >= 3)
        # The first attempt of one of the two alerts got a 503; each arrives with a 200.
        delivered = {str(b["alert_id"]): b for b in receiver.bodies}
        assert len(delivered) == 2
        version = next(b for b in delivered.values() if b["app_version"] == "2.0")
        assert version["kind"] == "volume_alert"
        assert (version["event_name"], version["top_dlq_reason"]) == (
            "order_completed",
            "schema_violation",
        )

        def settled() -> bool:
            drive(monitor.stage, monitor.consumer)
            return monitor.stage.status().webhook == {"delivered": 2}

        wait_for(settled)
    finally:
        monitor.stop()
        receiver.close()


def test_alerts_a_dead_webhook_did_not_take_are_sent_after_a_restart(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    clock = FakeClock(START)
    monitor = Monitor(log, tmp_path / "monitor.db", clock, webhook_url=closed)
    started = time.monotonic()
    monitor.hour(START, released=True, failing=True)
    # Generous for a loaded machine: the webhook sends in the background, so only a stage
    # that waited on it (connect, retries) would come near this.
    assert time.monotonic() - started < 10.0, "a dead webhook must not hold up the stage"
    assert len(alerts(log)) == 2
    monitor.stop()
    assert monitor.stage.status().webhook == {"pending": 2}

    receiver = _Receiver([])
    try:
        monitor.webhook_url = receiver.url
        monitor._start()
        drive(monitor.stage, monitor.consumer)
        wait_for(lambda: len(receiver.bodies) == 2)
        assert len(alerts(log)) == 2
    finally:
        monitor.stop()
        receiver.close()


def test_alerts_judged_before_a_crash_are_published_once_after_it(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    monitor = Monitor(log, tmp_path / "monitor.db", clock)
    shop_hour(log, START, released=True, failing=True)
    clock.now = START + HOUR + timedelta(minutes=6)
    with pytest.raises(RuntimeError, match="killed"):
        drive(monitor.stage, _Crashing(monitor.consumer, publishing=True))
    assert alerts(log) == []
    monitor.restart()
    drive(monitor.stage, monitor.consumer)
    drive(monitor.stage, monitor.consumer)
    assert [a.app_version for a in alerts(log)] == [ALL_VERSIONS, "2.0"]
    monitor.stop()


def test_records_a_stage_set_aside_raise_no_alert_and_are_counted_apart(
    log: EmbeddedLog, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    monitor = Monitor(log, tmp_path / "monitor.db", clock)
    for h in range(3 * 24):
        monitor.hour(START + h * HOUR)
    # The next hour the lake stage sets aside 60 accepted events and the profiles-lake stage
    # 40 change records (which carry no source): the sources sent nothing wrong.
    start = START + 3 * 24 * HOUR
    shop_hour(log, start, released=False, failing=False)
    letters = [
        dead_letter("lake", replace(rec, timestamp_ms=_ms(start)), "TypeError: too big")
        for rec in log.read("events", 0, 0, 100_000)[-60:]
    ]
    change = Record("changes", 1, 7, None, b'{"kind":"trait_changed"}', (), 0)
    letters += [
        dead_letter("profiles-lake", replace(change, offset=n, timestamp_ms=_ms(start)), "boom")
        for n in range(40)
    ]
    log.append_sync("dlq", letters)
    clock.now = start + HOUR + timedelta(minutes=6)
    drive(monitor.stage, monitor.consumer)
    monitor.hour(start + HOUR)

    assert alerts(log) == []
    status = monitor.stage.status()
    assert status.series == {"ok": 4} and status.alerting == []
    assert status.records_total["set_aside"] == 100
    assert "dlq" not in status.records_total
    monitor.stop()


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)
