"""Behaviour of the embedded log beyond the contract: what is on disk, and several handles."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import clew
import clew.log.embedded
from clew.log.base import LogError, Message, TopicSpec
from clew.log.embedded import EmbeddedLog

SRC = Path(clew.__path__[0]).parent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


@pytest.fixture
def log(path: Path) -> Iterator[EmbeddedLog]:
    log = EmbeddedLog(path)
    yield log
    log.close()


def database_bytes(path: Path) -> bytes:
    """The database and every file SQLite keeps beside it (-wal, -shm, -journal)."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


@pytest.mark.parametrize("size", [64, 20_000], ids=["in-page", "overflow-pages"])
def test_deleted_values_leave_no_bytes_on_disk(log: EmbeddedLog, path: Path, size: int) -> None:
    log.create_topic(TopicSpec("events", 3))
    reader = log.consumer("reader", ["events"])
    secrets = [b"SECRET-%04d-" % i for i in range(40)]
    for i, secret in enumerate(secrets):
        # Interleave with other records in separate transactions so that pages split and
        # cells move after the secrets were written.
        log.append_sync("events", [Message(secret.ljust(size, b"s"), key=b"alice")])
        log.append_sync("events", [Message(b"other-%d" % i * (size // 8), key=b"bob%d" % i)])
        if i % 10 == 0:
            reader.poll(timeout_s=0)
    assert all(secret in database_bytes(path) for secret in secrets)

    removed = log.delete_where("events", lambda r: r.value.startswith(b"SECRET-"))

    assert removed == len(secrets)
    on_disk = database_bytes(path)
    assert [s for s in secrets if s in on_disk] == []
    assert b"other-39" in on_disk
    reader.close()


def test_delete_where_refuses_to_report_success_while_bytes_remain(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = clew.log.embedded._connect

    def impatient(path: Path) -> sqlite3.Connection:
        conn = connect(path)
        conn.execute("PRAGMA busy_timeout = 100")
        return conn

    monkeypatch.setattr(clew.log.embedded, "_connect", impatient)
    log = EmbeddedLog(path)
    backup = sqlite3.connect(path, isolation_level=None)
    try:
        log.create_topic(TopicSpec("events", 1))
        log.append_sync("events", [Message(b"SECRET-%d" % i) for i in range(3)])
        # A long read transaction (a backup, say) pins the write-ahead log.
        backup.execute("BEGIN")
        backup.execute("SELECT count(*) FROM records").fetchone()

        with pytest.raises(LogError, match="delete_where again"):
            log.delete_where("events", lambda r: True)

        backup.execute("COMMIT")
        assert log.delete_where("events", lambda r: True) == 0
        assert b"SECRET-" not in database_bytes(path)
    finally:
        backup.close()
        log.close()


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from clew.log.base import Message, TopicSpec
    from clew.log.embedded import EmbeddedLog

    log = EmbeddedLog(Path(sys.argv[1]))
    log.create_topic(TopicSpec("crash", 3))
    i = 0
    while True:
        # Several appends in flight at once, so acknowledgements come from group commits.
        pending = []
        for _ in range(8):
            pending.append((i, log.append("crash", [Message(b"value-%d" % i, key=b"%d" % i)])))
            i += 1
        for n, fut in pending:
            [pos] = fut.result()
            print(n, pos.partition, pos.offset, flush=True)
    """
)


def test_acknowledged_appends_survive_sigkill(path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    acknowledged: list[tuple[int, int, int]] = []

    def acknowledge(line: bytes) -> None:
        n, partition, offset = map(int, line.split())
        acknowledged.append((n, partition, offset))

    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(path)],
        stdout=subprocess.PIPE,
        env=env,
    ) as child:
        assert child.stdout is not None
        watchdog = threading.Timer(15, child.kill)  # readline below would wait for a stuck child
        watchdog.start()
        while len(acknowledged) < 500 and (line := child.stdout.readline()):
            acknowledge(line)
        child.send_signal(signal.SIGKILL)
        watchdog.cancel()
        watchdog.join()
        # Lines printed before the kill are acknowledgements too; a torn last line is not.
        for line in child.stdout.read().splitlines(keepends=True):
            if line.endswith(b"\n"):
                acknowledge(line)
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 500, "the writer did not get going"

    log = EmbeddedLog(path)
    try:
        for n, partition, offset in acknowledged:
            [record] = log.read("crash", partition, offset, max_records=1)
            assert (record.offset, record.value) == (offset, b"value-%d" % n)
        [pos] = log.append_sync("crash", [Message(b"after the crash", key=b"0")])
        newest = max(o for _, p, o in acknowledged if p == pos.partition)
        assert pos.offset > newest
    finally:
        log.close()


def test_two_handles_on_one_database_append_without_clashing(log: EmbeddedLog, path: Path) -> None:
    log.create_topic(TopicSpec("shared", 2))
    other = EmbeddedLog(path)
    try:
        got = []
        for i in range(10):
            got += log.append_sync("shared", [Message(b"a%d" % i)])
            got += other.append_sync("shared", [Message(b"b%d" % i)])
        per_partition = Counter(p.partition for p in got)
        assert sorted((p.partition, p.offset) for p in got) == sorted(
            (p, o) for p, n in per_partition.items() for o in range(n)
        )
        reader = other.consumer("g", ["shared"])
        assert len(reader.poll(max_records=100, timeout_s=1)) == 20
        reader.close()
    finally:
        other.close()


def test_a_cancelled_append_does_not_stop_the_log(log: EmbeddedLog) -> None:
    log.create_topic(TopicSpec("t", 1))
    cancelled = [log.append("t", [Message(b"maybe")]) for _ in range(200)]
    for fut in cancelled:
        fut.cancel()

    [pos] = log.append("t", [Message(b"after")]).result(timeout=5)

    kept = log.read("t", 0, 0, max_records=1000)
    assert kept[-1].value == b"after"
    assert [r.offset for r in kept] == list(range(pos.offset + 1))


def test_consumers_of_one_group_follow_membership_changes(log: EmbeddedLog) -> None:
    log.create_topic(TopicSpec("t", 4))
    first = log.consumer("g", ["t"])
    assert len(first.assignment()) == 4
    second = log.consumer("g", ["t"])
    assert len(first.assignment()) + len(second.assignment()) == 4
    second.close()
    assert len(first.assignment()) == 4
    first.close()
    with pytest.raises(LogError):
        first.poll(timeout_s=0)


def test_poll_sees_appends_from_another_handle(log: EmbeddedLog, path: Path) -> None:
    log.create_topic(TopicSpec("t", 1))
    consumer = log.consumer("g", ["t"])
    other = EmbeddedLog(path)
    later = threading.Timer(0.2, other.append_sync, args=("t", [Message(b"from afar")]))
    try:
        later.start()
        records = consumer.poll(timeout_s=5)
    finally:
        later.join()
        other.close()
        consumer.close()
    assert [r.value for r in records] == [b"from afar"]
