"""The profiles worker of `clew serve` SIGKILLed mid-stream, two or three times, and restarted
by serve: every person's orders count and lifetime value, in the serving store and in the
lake's ``customer_profiles``, are exactly what was sent, each order counted once.

The first kill lands at a random moment; the others right after the worker commits a batch
to the serving store, before the log records its offsets, so that the restarted worker is
redelivered events it already applied (random moments alone hit that window in about a
third of runs)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from _support import WRITE_KEY, ServeProcess, drained, serve_worker, wait_for
from clew.lake.query import Lake
from clew.store import SQLiteProfileStore

pytestmark = pytest.mark.slow

PEOPLE = 200
BATCH_EVENTS = 50
# About 2,500 events a second: the profiles stage always has work, yet its backlog stays
# small enough to drain in seconds on a busy machine.
BATCHES_PER_SECOND = 50
RETRY_STATUSES = {503}


def _revenue(order: int) -> float:
    """A person's ``order``-th order's revenue (1.00, 2.01, 3.02, ...): distinct for each of
    their orders, with cents, so an order counted twice or lost shows in the total."""
    return round(1 + 1.01 * order, 2)


@dataclass(slots=True)
class Sent:
    """Per person, the orders acknowledged and their total; every response status."""

    orders: dict[str, int] = field(default_factory=dict)
    value: dict[str, float] = field(default_factory=dict)
    statuses: Counter[int | str] = field(default_factory=Counter)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class People:
    """Events for ``PEOPLE`` people picked at random: each one's identify, then orders."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._orders: dict[str, int] = {}

    def batch(self) -> list[dict[str, Any]]:
        events = []
        for _ in range(BATCH_EVENTS):
            user = f"u-{self._rng.randrange(PEOPLE):03d}"
            event: dict[str, Any]
            if user not in self._orders:
                self._orders[user] = 0
                event = {"type": "identify", "traits": {"email": f"{user}@clew.test"}}
            else:
                event = {
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {"revenue": _revenue(self._orders[user])},
                }
                self._orders[user] += 1
            events.append({**event, "userId": user, "messageId": str(uuid.uuid4())})
        return events


def _post(client: httpx.Client, url: str, body: bytes) -> int | str:
    try:
        response = client.post(
            url + "/v1/batch",
            content=body,
            auth=(WRITE_KEY, ""),
            headers={"content-type": "application/json"},
        )
    except httpx.TransportError:
        return "conn"
    return response.status_code


@contextmanager
def sending(url: str, rng: random.Random) -> Iterator[Sent]:
    """A thread posting ``BATCHES_PER_SECOND`` batches until the block exits, re-sending each
    batch (same message ids and timestamps) after a 503 until it gets a 200; yields what was
    acknowledged. Any other response fails the test."""
    sent = Sent()
    stop = threading.Event()
    people = People(rng)
    failure: list[str] = []

    def run() -> None:
        next_at = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += 1 / BATCHES_PER_SECOND
                events = people.batch()
                timestamp = _now()
                for ev in events:
                    ev["timestamp"] = timestamp
                deadline = time.monotonic() + 30
                while True:
                    body = orjson.dumps({"batch": events, "sentAt": _now()})
                    outcome = _post(client, url, body)
                    sent.statuses[outcome] += 1
                    if outcome == 200:
                        break
                    if outcome not in RETRY_STATUSES or time.monotonic() > deadline:
                        failure.append(f"a batch got {outcome}")
                        return
                    time.sleep(0.05)
                for ev in events:
                    if ev["type"] == "track":
                        user = ev["userId"]
                        sent.orders[user] = sent.orders.get(user, 0) + 1
                        sent.value[user] = sent.value.get(user, 0.0) + ev["properties"]["revenue"]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(40)
        assert not thread.is_alive(), "the sender is stuck"
        assert not failure, f"{failure[0]}; statuses {sent.statuses}"


def _profiles_worker(serve_pid: int) -> int | None:
    return serve_worker(serve_pid, "profiles")


def _next_store_commit(db: Path, timeout_s: float = 10.0) -> None:
    """Return as soon as another connection commits to the SQLite database ``db``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        deadline = time.monotonic() + timeout_s
        while conn.execute("PRAGMA data_version").fetchone()[0] == version:
            assert time.monotonic() < deadline, "the profiles stage committed nothing"
            time.sleep(0.0002)
    finally:
        conn.close()


def _kill_profiles_worker(
    serve: ServeProcess, killed: list[int], rng: random.Random, after_commit: bool
) -> None:
    """Once serve runs a profiles worker not yet killed, SIGKILL it after a random while:
    then, or (``after_commit``) right after its next batch is committed to the serving store,
    before the log has its offsets (the redelivery that must not count orders again)."""
    assert serve.proc is not None
    serve_pid = serve.proc.pid
    found: list[int] = []

    def fresh_worker() -> bool:
        pid = _profiles_worker(serve_pid)
        if pid is not None and pid not in killed:
            found.append(pid)
            return True
        return False

    wait_for(fresh_worker, timeout_s=20)
    # Past its start-up (imports, opening the log and store), into its batches.
    time.sleep(rng.uniform(0.8, 2.5))
    if after_commit:
        _next_store_commit(serve.data_dir / "profiles.db")
    os.kill(found[-1], signal.SIGKILL)
    killed.append(found[-1])


def test_sigkilled_profiles_worker_counts_each_order_once(serve_process: ServeProcess) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    context = f"(seed {seed})"
    killed: list[int] = []
    assert serve_process.proc is not None
    serve_pid = serve_process.proc.pid

    with sending(serve_process.url, rng) as sent:
        # The first kill at any moment, the others right after a store commit.
        for i in range(rng.choice((2, 3))):
            _kill_profiles_worker(serve_process, killed, rng, after_commit=i > 0)
        time.sleep(rng.uniform(0.5, 2))
    assert len(sent.orders) == PEOPLE, context

    # Serve restarts the last one killed; then every stage catches up.
    wait_for(lambda: _profiles_worker(serve_pid) is not None, timeout_s=20)
    wait_for(lambda: drained(serve_process.url), timeout_s=40)

    expected = {u: (sent.orders[u], round(sent.value[u], 2)) for u in sent.orders}
    store = SQLiteProfileStore(serve_process.data_dir / "profiles.db")
    try:
        served: dict[str, tuple[int, float] | None] = {}
        for user in expected:
            pid = store.lookup("user_id", user)
            profile = None if pid is None else store.get(pid)
            served[user] = (
                None
                if profile is None
                else (
                    profile.computed.get("orders_count", 0),
                    round(profile.computed.get("total_lifetime_value", 0.0), 2),
                )
            )
    finally:
        store.close()
    wrong = {u: (served[u], expected[u]) for u in expected if served[u] != expected[u]}
    assert not wrong, (
        f"{len(wrong)} profiles in the store differ from what was sent after kills of "
        f"{killed} {context}; (stored, sent) e.g. {dict(list(wrong.items())[:5])}"
    )

    rows = (
        Lake(serve_process.data_dir / "lake")
        .sql("SELECT user_id, orders_count, total_lifetime_value FROM customer_profiles")
        .rows
    )
    in_lake: dict[str, tuple[int, float]] = {}
    for user, orders, value in rows:
        assert user not in in_lake, f"{user} has two rows in customer_profiles {context}"
        in_lake[user] = (orders, round(value, 2))
    assert set(in_lake) == set(expected), context
    wrong_lake = {u: (in_lake[u], expected[u]) for u in expected if in_lake[u] != expected[u]}
    assert not wrong_lake, (
        f"{len(wrong_lake)} rows of customer_profiles differ from what was sent {context}; "
        f"(lake, sent) e.g. {dict(list(wrong_lake.items())[:5])}"
    )
