"""The embedded log's doorbell: consumers of other processes and handles wake when records are
committed, instead of finding them on their next poll."""

from __future__ import annotations

import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import clew
from clew.log._doorbell import BELL_SUFFIX, SAFETY_NET_POLL_S, Doorbell, bell_dir
from clew.log.base import Consumer, Message, TopicSpec
from clew.log.embedded import EmbeddedLog

SRC = Path(clew.__path__[0]).parent
APPENDS = 200

# A consumer in its own process: prints "ready" once it listens, then for each record the
# record's value and the CLOCK_MONOTONIC time it got it (the clock is the machine's, so the
# parent can compare it with its own), until a record "stop".
REMOTE_CONSUMER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from clew.log.base import TopicSpec
    from clew.log.embedded import EmbeddedLog

    log = EmbeddedLog(Path(sys.argv[1]))
    log.create_topic(TopicSpec("t", 1))
    consumer = log.consumer("remote", ["t"])
    print("ready", flush=True)
    while True:
        for r in consumer.poll(timeout_s=10):
            print(r.value.decode(), time.monotonic(), flush=True)
            if r.value == b"stop":
                consumer.close()
                log.close()
                sys.exit(0)
    """
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


@pytest.fixture
def log(path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(path)
    log.create_topic(TopicSpec("t", 1))
    yield log
    log.close()


def sockets(path: Path) -> list[str]:
    where = bell_dir(path)
    assert where is not None
    return sorted(p.name for p in where.glob("*" + BELL_SUFFIX)) if where.exists() else []


def remote_consumer(path: Path) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", REMOTE_CONSUMER, str(path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    return child


def hop_latencies(log: EmbeddedLog, consumer: Consumer, n: int) -> list[float]:
    """Seconds from each append's commit until ``consumer`` (another handle's) returns it,
    one record at a time, the consumer waiting when it comes."""
    out: list[float] = []
    with ThreadPoolExecutor(1) as reader:
        for i in range(n):
            polled = reader.submit(consumer.poll, 500, 5.0)
            time.sleep(0.002)
            log.append_sync("t", [Message(b"%d" % i)])
            committed = time.monotonic()
            assert [r.value for r in polled.result()] == [b"%d" % i]
            out.append(time.monotonic() - committed)
    return out


def test_a_consumer_in_another_process_wakes_when_a_record_is_committed(
    log: EmbeddedLog, path: Path
) -> None:
    child = remote_consumer(path)
    watchdog = threading.Timer(30, child.kill)  # readline below would wait for a stuck child
    watchdog.start()
    try:
        committed: dict[str, float] = {}
        for i in range(APPENDS):
            # Spaced out, so that the consumer is waiting (not reading) when each one comes.
            time.sleep(0.004 + (i % 5) * 0.002)
            log.append_sync("t", [Message(b"%d" % i)])
            committed[str(i)] = time.monotonic()
        log.append_sync("t", [Message(b"stop")])
        out, _ = child.communicate(timeout=30)
    finally:
        watchdog.cancel()
        watchdog.join()
        child.kill()
        child.wait()
    seen = dict(line.split() for line in out.decode().splitlines())
    assert set(committed) <= set(seen)
    # The writer rings before it answers the append, so a record may be seen "before".
    latencies = sorted(max(0.0, float(seen[k]) - t) for k, t in committed.items())
    p50 = statistics.median(latencies)
    # Polling every 20 ms, as the log did before its doorbell, gives a median near 10 ms;
    # a ring that never arrives, one near half the safety net's interval.
    assert p50 < 0.010, f"median hop {p50 * 1000:.1f} ms, p99 {latencies[-3] * 1000:.1f} ms"


def test_a_consumer_of_another_handle_in_the_same_process_wakes_too(
    log: EmbeddedLog, path: Path
) -> None:
    other = EmbeddedLog(path)
    consumer = other.consumer("g", ["t"])
    try:
        latencies = hop_latencies(log, consumer, 30)
    finally:
        consumer.close()
        other.close()
    assert statistics.median(latencies) < SAFETY_NET_POLL_S / 5


def test_a_socket_left_by_a_killed_process_does_not_stop_appends(
    log: EmbeddedLog, path: Path
) -> None:
    consumer = log.consumer("g", ["t"])
    child = remote_consumer(path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.stdout is not None
    child.stdout.close()
    [stale] = [name for name in sockets(path) if name.startswith(f"{child.pid}-")]
    try:
        log.append_sync("t", [Message(b"after the kill")])
        assert [r.value for r in consumer.poll(timeout_s=5)] == [b"after the kill"]
        assert stale not in sockets(path)
    finally:
        consumer.close()


def test_listening_removes_sockets_left_on_other_databases(tmp_path: Path) -> None:
    abandoned = tmp_path / "abandoned" / "log.db"
    where = bell_dir(abandoned)
    assert where is not None
    where.mkdir(parents=True)
    left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.bind(str(where / f"99-00000000{BELL_SUFFIX}"))
    left.close()  # as a process killed before it could remove its socket
    assert sockets(abandoned) != []

    log = EmbeddedLog(tmp_path / "log.db")
    log.create_topic(TopicSpec("t", 1))
    consumer = log.consumer("g", ["t"])
    consumer.close()
    log.close()
    assert not where.exists()


def test_a_lost_ring_costs_latency_only(
    log: EmbeddedLog, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Doorbell, "ring", lambda self, topics: None)
    other = EmbeddedLog(path)
    consumer = other.consumer("g", ["t"])
    try:
        threading.Timer(0.05, log.append_sync, args=("t", [Message(b"unannounced")])).start()
        started = time.monotonic()
        records = consumer.poll(timeout_s=5)
        waited = time.monotonic() - started
    finally:
        consumer.close()
        other.close()
    assert [r.value for r in records] == [b"unannounced"]
    assert waited < SAFETY_NET_POLL_S * 4


def test_a_data_directory_too_long_for_a_socket_address_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / ("e" * 120) / "log.db"
    where = bell_dir(deep)
    assert where is not None
    assert len(os.fsencode(where)) < 90
    writer = EmbeddedLog(deep)
    writer.create_topic(TopicSpec("t", 1))
    reader = EmbeddedLog(deep)
    consumer = reader.consumer("g", ["t"])
    try:
        assert len(sockets(deep)) == 1
        latencies = hop_latencies(writer, consumer, 20)
    finally:
        consumer.close()
        reader.close()
        writer.close()
    assert statistics.median(latencies) < SAFETY_NET_POLL_S / 5


def test_closing_the_log_removes_its_socket(path: Path) -> None:
    log = EmbeddedLog(path)
    log.create_topic(TopicSpec("t", 1))
    assert sockets(path) == []
    consumer = log.consumer("g", ["t"])
    assert sockets(path) == [name for name in sockets(path) if name.startswith(f"{os.getpid()}-")]
    assert len(sockets(path)) == 1
    consumer.close()
    log.close()
    assert sockets(path) == []
    where = bell_dir(path)
    assert where is not None and not where.exists()


def test_a_forked_child_closing_its_copy_leaves_the_parent_listening(path: Path) -> None:
    heard: queue.SimpleQueue[frozenset[str] | None] = queue.SimpleQueue()
    bell = Doorbell(path, heard.put)
    bell.listen()
    try:
        [mine] = sockets(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
            pid = os.fork()
        if pid == 0:
            bell.close()
            os._exit(0)
        os.waitpid(pid, 0)
        assert sockets(path) == [mine]
        ringer = Doorbell(path, heard.put)
        ringer.ring(["events", "raw"])
        ringer.close()
        assert heard.get(timeout=5) == frozenset({"events", "raw"})
    finally:
        bell.close()
    assert sockets(path) == []
