"""`clew serve` killed mid-ingest (SIGKILL) or stopped (SIGTERM) and restarted on the same data
dir: every event whose request got a 200 is in the lake exactly once, and a client that
re-sends what was not acknowledged (as SDKs do) creates no duplicates."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from deltalake import DeltaTable

from _support import WRITE_KEY, ServeProcess, drained, lake_count, wait_for
from clew.lake.query import Lake

pytestmark = pytest.mark.slow

BATCH_EVENTS = 50
SENDERS = 8
# Statuses a client retries: Clew is overloaded or shutting down.
RETRY_STATUSES = {503}


@dataclass(frozen=True, slots=True)
class Batch:
    """One request's events; a retry re-sends the same ids and timestamp, with a new sentAt."""

    ids: list[str]
    timestamp: str


class Ledger:
    """What a fleet of clients sent: acknowledged message ids, and batches still owed a
    retry (refused, or cut off by the server dying, whether or not the server kept them)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: set[str] = set()
        self.acked: set[str] = set()
        self.acked_batches: list[Batch] = []
        self.pending: deque[Batch] = deque()
        self.statuses: Counter[int | str] = Counter()

    def next_batch(self) -> Batch:
        with self.lock:
            if self.pending:
                return self.pending.popleft()
            batch = Batch([str(uuid.uuid4()) for _ in range(BATCH_EVENTS)], _now())
            self.sent.update(batch.ids)
            return batch

    def replay_last_acked(self, n: int) -> None:
        """Owe a retry of the last ``n`` acknowledged batches, as a client does whose
        responses were lost (e.g. to its own timeout) although the server kept the batch."""
        with self.lock:
            self.pending.extend(self.acked_batches[-n:])

    def record(self, batch: Batch, outcome: int | str) -> None:
        with self.lock:
            self.statuses[outcome] += 1
            if outcome == 200:
                self.acked.update(batch.ids)
                self.acked_batches.append(batch)
            else:
                self.pending.append(batch)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _post(client: httpx.Client, url: str, batch: Batch) -> int | str:
    """POST one batch; its HTTP status, or ``"conn"`` when the connection failed."""
    body = {
        "batch": [
            {
                "type": "track",
                "event": "Crash Tested",
                "userId": f"user-{int(mid[:4], 16) % 20}",
                "messageId": mid,
                "timestamp": batch.timestamp,
                "properties": {"i": i},
            }
            for i, mid in enumerate(batch.ids)
        ],
        "sentAt": _now(),
    }
    try:
        response = client.post(
            url + "/v1/batch",
            content=orjson.dumps(body),
            auth=(WRITE_KEY, ""),
            headers={"content-type": "application/json"},
        )
    except httpx.TransportError:
        return "conn"
    return response.status_code


@contextmanager
def sending(url: str, ledger: Ledger, threads: int = SENDERS) -> Iterator[threading.Event]:
    """``threads`` threads posting batches back to back (retries first) until the server goes
    away or the yielded event is set; joined on exit."""
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                batch = ledger.next_batch()
                outcome = _post(client, url, batch)
                ledger.record(batch, outcome)
                if outcome == "conn":
                    return
                if outcome != 200:
                    time.sleep(0.05)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        yield stop
    finally:
        stop.set()
        for t in workers:
            t.join(30)
            assert not t.is_alive(), "a sender is stuck"


def _retry_pending(url: str, ledger: Ledger, timeout_s: float = 30) -> None:
    """Re-send every unacknowledged batch until each gets a 200; then every batch sent was
    acknowledged, and Clew answered nothing a client would not retry."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10) as client:
        while ledger.pending:
            assert time.monotonic() < deadline, f"{len(ledger.pending)} batches never accepted"
            batch = ledger.pending.popleft()
            outcome = _post(client, url, batch)
            ledger.record(batch, outcome)
            if outcome != 200:
                time.sleep(0.1)
    unexpected = {s for s in ledger.statuses if s not in (200, "conn", *RETRY_STATUSES)}
    assert not unexpected, f"unexpected responses: {ledger.statuses}"
    assert ledger.acked == ledger.sent


def _delta_version(proc: ServeProcess) -> int:
    path = proc.data_dir / "lake" / "events"
    return DeltaTable(str(path)).version() if DeltaTable.is_deltatable(str(path)) else -1


def _assert_lake_holds(proc: ServeProcess, acked: set[str], sent: set[str]) -> None:
    """Once every stage has caught up: each ``acked`` id is in the lake exactly once, and
    nothing outside ``sent`` is."""
    # Every stage, the profiles stage (a few thousand events/s) among them, works off the
    # burst; on 2 busy cores that can take over a minute.
    wait_for(lambda: drained(proc.url), timeout_s=150)
    lake = Lake(proc.data_dir / "lake")
    total, distinct = lake.sql("SELECT count(*), count(DISTINCT message_id) FROM events").rows[0]
    in_lake = {r[0] for r in lake.sql("SELECT DISTINCT message_id FROM events").rows}
    missing = acked - in_lake
    never_sent = in_lake - sent
    assert not missing, f"{len(missing)} acknowledged events are not in the lake"
    assert not never_sent, f"{len(never_sent)} events in the lake were never sent"
    assert total == distinct, f"{total - distinct} duplicate rows in the lake"
    assert lake_count(proc.data_dir, "dlq") == 0


def test_sigkill_mid_ingest_and_mid_recovery_loses_and_duplicates_nothing(
    serve_process: ServeProcess,
) -> None:
    ledger = Ledger()

    # Kill 1: while requests are in flight and both stages have a backlog.
    with sending(serve_process.url, ledger):
        time.sleep(2)
        serve_process.kill()
    assert len(ledger.acked) > 10 * BATCH_EVENTS, ledger.statuses
    assert ledger.statuses["conn"] >= 1

    # Kill 2: right after restart, once the lake stage has committed its first flush of the
    # backlog, while retries and new traffic pour in.
    serve_process.start()
    version = _delta_version(serve_process)
    with sending(serve_process.url, ledger):
        wait_for(lambda: _delta_version(serve_process) > version, timeout_s=10, interval_s=0.01)
        serve_process.kill()

    # No acknowledged batch has been sent twice yet, so none can hide a loss.
    serve_process.start()
    _assert_lake_holds(serve_process, ledger.acked, ledger.sent)

    with sending(serve_process.url, ledger):
        time.sleep(0.5)
    _retry_pending(serve_process.url, ledger)
    _assert_lake_holds(serve_process, ledger.sent, ledger.sent)


def test_batches_resent_after_sigkill_are_not_duplicated(serve_process: ServeProcess) -> None:
    ledger = Ledger()
    with sending(serve_process.url, ledger):
        time.sleep(1.5)
        serve_process.kill()

    # The last acknowledged batches were mostly still waiting for the validate stage when
    # the server died; the resends race them through it after the restart.
    serve_process.start()
    ledger.replay_last_acked(2 * SENDERS)
    with sending(serve_process.url, ledger):
        time.sleep(0.5)
    ledger.replay_last_acked(4 * SENDERS)
    _retry_pending(serve_process.url, ledger)
    _assert_lake_holds(serve_process, ledger.sent, ledger.sent)


def test_sigterm_then_restart_loses_nothing(serve_process: ServeProcess) -> None:
    ledger = Ledger()
    # Enough senders that the stages are behind when the server is told to stop.
    with sending(serve_process.url, ledger, threads=2 * SENDERS):
        time.sleep(1.5)
        serve_process.stop()
    assert serve_process.proc is not None
    assert serve_process.proc.returncode != -9, "clew serve did not stop on SIGTERM"
    assert len(ledger.acked) > 10 * BATCH_EVENTS, ledger.statuses

    serve_process.start()
    with sending(serve_process.url, ledger):
        time.sleep(0.5)
    _retry_pending(serve_process.url, ledger)
    _assert_lake_holds(serve_process, ledger.sent, ledger.sent)
