"""A destination whose receiver keeps failing: the sender retries one batch with the same
delivery id until ``retry_for_s`` has passed since its first attempt, then gives up: the batch
moves to the outbox's dead letters, with its records, and is counted. Time is the sender's
injected clock; the receiver is a real HTTP server on a loopback port answering 500."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import wait_for
from clew.destinations.config import DestinationConfig
from clew.destinations.outbox import DEAD_LETTERED, RETRIED, Outbox
from clew.destinations.sender import Sender
from destinations._receiver import Receiver

T0_S = 1_700_000_000.0
RETRY_FOR_S = 60.0


class _Clock:
    """Seconds since the epoch, moved only by the test."""

    def __init__(self, now_s: float) -> None:
        self._now = now_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@pytest.fixture
def failing() -> Iterator[Receiver]:
    receiver = Receiver(script=[(500, {})] * 1000).start()
    yield receiver
    receiver.stop()


def test_a_batch_is_given_up_after_retry_for_s_and_counted(
    tmp_path: Path, failing: Receiver
) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    payloads = [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    outbox.enqueue({"hook": payloads}, {}, {}, {"hook": 100}, int(T0_S * 1000))
    config = DestinationConfig(
        name="hook",
        url=failing.url,
        max_batch_wait_ms=0,
        retry_for_s=RETRY_FOR_S,
        retry_initial_s=1.0,
        retry_max_delay_s=1.0,
    )
    clock = _Clock(T0_S)
    # rand() == 1: each retry waits the full backoff (1 s of the clock), which stands still
    # until the test moves it; so each move of the clock allows exactly one more attempt.
    sender = Sender(config, path, poll_s=0.02, clock=clock, rand=lambda: 1.0)
    sender.start()
    try:
        wait_for(lambda: len(failing.requests) == 1)
        wait_for(lambda: (head := outbox.head("hook")) is not None and head.attempts == 1)
        clock.advance(30.0)  # inside the window: retried, not given up
        sender.wake()
        wait_for(lambda: (head := outbox.head("hook")) is not None and head.attempts == 2)
        assert outbox.dead_letters("hook") == []
        assert len(failing.requests) == 2

        clock.advance(RETRY_FOR_S)  # 90 s after the first attempt: the window is over
        sender.wake()
        wait_for(lambda: outbox.dead_letters("hook") != [])
    finally:
        sender.stop()
        sender.join(5)
    assert not sender.alive

    (dead,) = outbox.dead_letters("hook")
    assert dead.events == 3
    assert dead.status == 500
    assert dead.attempts == 3
    assert dead.reason.startswith("gave up after 3 attempts over 90 s (retry_for_s = 60)")
    assert dead.failed_ms == int((T0_S + 90.0) * 1000)
    # Every attempt carried the same batch under the same delivery id.
    assert len(failing.requests) == 3
    assert {r.delivery for r in failing.requests} == {dead.delivery_id}
    assert all(len(r.batch) == 3 for r in failing.requests)
    # The records left the outbox for the dead-letter store, and were counted there.
    assert outbox.head("hook") is None
    assert outbox.waiting() == {}
    assert outbox.dead_letter_body(dead.delivery_id) == b"[" + b",".join(payloads) + b"]"
    counters = outbox.counters()
    assert counters[("hook", "deliveries:" + DEAD_LETTERED)] == 1
    assert counters[("hook", "events:" + DEAD_LETTERED)] == 3
    assert counters[("hook", "deliveries:" + RETRIED)] == 2
    (delivery,) = outbox.deliveries("hook")
    assert delivery.outcome == DEAD_LETTERED and delivery.attempts == 3
    outbox.close()
