"""Records a stage cannot process, set aside so that the stage moves on.

The runner (:mod:`clew.stages.runner`) retries a failing batch a few times, then looks for the
record that makes it fail and sets it aside: to the ``dlq`` topic as a dead letter with the
reason :data:`~clew.dlq.records.STAGE_FAILURE`, the stage, the error and the record's
original bytes and headers (so `clew dlq list` shows it), and into :class:`StageLedger` in
``state.db``. The ledger is what keeps a set-aside record away from its stage for good: a
stage that resumes from its own progress (the lake from its Delta commits, destinations from
the outbox) reads it again after a restart, and the runner drops it before the stage sees it.
It also tells ``/health`` and ``/metrics`` which stages are failing now and which set records
aside recently. An entry is kept while the log holds its record
(:meth:`StageLedger.forget_retired`, run by `clew serve` after each round of log retention).
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from clew._errors import ServiceUnavailableError
from clew._sqlite import open_sqlite
from clew.dlq.records import STAGE_FAILURE, DeadLetter
from clew.log.base import Log, LogError, Message, Record
from clew.raw_records import SOURCE
from clew.store.base import StoreError

# How long a stage that set records aside stays ``degraded`` in /health.
RECENT_S = 900.0
# Errors of what a stage talks to (disk, network, the log, the serving store, Redis): retried
# until they pass, never blamed on a record, so an outage never empties the log into the dlq.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    LogError,
    StoreError,
    ServiceUnavailableError,
)

_encoder = msgspec.json.Encoder()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS stage_set_aside (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (grp, topic, partition, "offset")
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stage_failing (
    grp TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    since REAL NOT NULL
) WITHOUT ROWID;
"""


def dead_letter(stage: str, rec: Record, error: str) -> Message:
    """The ``dlq`` record for ``rec``, set aside by ``stage`` after ``error``. The payload is
    the record's value as text, or base64 (``payload_encoding``) when it is not UTF-8;
    ``raw_partition``/``raw_offset`` locate it in ``topic``."""
    try:
        payload, encoding = rec.value.decode(), None
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(rec.value).decode(), "base64"
    received = datetime.fromtimestamp(rec.timestamp_ms / 1000, tz=UTC).isoformat()
    letter = DeadLetter(
        reason=STAGE_FAILURE,
        message=error,
        payload=payload,
        source_id=(rec.header(SOURCE) or b"").decode(errors="replace"),
        received_at=received,
        raw_partition=rec.partition,
        raw_offset=rec.offset,
        index=-1,
        dlq_id=f"{stage}:{rec.topic}:{rec.partition}:{rec.offset}",
        stage=stage,
        topic=rec.topic,
        headers={k: v.decode(errors="replace") for k, v in rec.headers},
        payload_encoding=encoding,
    )
    return Message(value=_encoder.encode(letter), key=rec.key)


@dataclass(frozen=True, slots=True)
class StageTrouble:
    """What ails one stage: the error of its last attempt while it keeps failing (``failing``),
    and the records it set aside within :data:`RECENT_S` (``set_aside_recent``, the last
    one's error in ``last_set_aside``)."""

    failing: str | None = None
    failing_since: float | None = None
    set_aside_recent: int = 0
    last_set_aside: str | None = None


class StageLedger:
    """Per stage (consumer group), the records set aside and whether it is failing now, in
    ``state.db`` so that `clew serve` sees what stages in worker processes report."""

    def __init__(self, path: Path) -> None:
        self._conn = open_sqlite(path, _SCHEMA)
        self._lock = threading.Lock()

    def set_aside(self, group: str, rec: Record, error: str) -> None:
        """Remember that ``group`` set ``rec`` aside; :meth:`skipped` lists it from now on."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO stage_set_aside VALUES (?, ?, ?, ?, ?, ?)",
                (group, rec.topic, rec.partition, rec.offset, error, time.time()),
            )

    def skipped(self, group: str) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) of every record ``group`` set aside."""
        with self._lock:
            rows = self._conn.execute(
                'SELECT topic, partition, "offset" FROM stage_set_aside WHERE grp = ?', (group,)
            ).fetchall()
        return {(t, p, o) for t, p, o in rows}

    def forget_retired(self, log: Log) -> int:
        """Forget the records ``log`` no longer holds (retention removed them): no stage can
        read them again, so nothing is left to keep away. Keeps the ledger as small as the
        log's retention keeps the topics. Returns how many entries were forgotten."""
        with self._lock:
            topics = [
                t for (t,) in self._conn.execute("SELECT DISTINCT topic FROM stage_set_aside")
            ]
        gone = 0
        for topic in topics:
            starts = log.start_offsets(topic)
            with self._lock:
                for partition, start in starts.items():
                    gone += self._conn.execute(
                        "DELETE FROM stage_set_aside WHERE topic = ? AND partition = ? "
                        'AND "offset" < ?',
                        (topic, partition, start),
                    ).rowcount
        return gone

    def failing(self, group: str, error: str) -> None:
        """``group``'s last attempt failed with ``error`` (since the first such failure)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO stage_failing VALUES (?, ?, ?) "
                "ON CONFLICT (grp) DO UPDATE SET error = excluded.error",
                (group, error, time.time()),
            )

    def recovered(self, group: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM stage_failing WHERE grp = ?", (group,))

    def trouble(self, now: float | None = None) -> dict[str, StageTrouble]:
        """The stages failing now or that set records aside within :data:`RECENT_S`."""
        since = (time.time() if now is None else now) - RECENT_S
        with self._lock:
            failing = self._conn.execute("SELECT grp, error, since FROM stage_failing").fetchall()
            recent = self._conn.execute(
                "SELECT grp, count(*), max(at) FROM stage_set_aside WHERE at >= ? GROUP BY grp",
                (since,),
            ).fetchall()
            last = {
                grp: self._conn.execute(
                    "SELECT error FROM stage_set_aside WHERE grp = ? AND at = ?", (grp, at)
                ).fetchone()[0]
                for grp, _, at in recent
            }
        out: dict[str, StageTrouble] = {}
        for grp, error, started in failing:
            out[grp] = StageTrouble(failing=error, failing_since=started)
        for grp, n, _ in recent:
            held = out.get(grp, StageTrouble())
            out[grp] = StageTrouble(held.failing, held.failing_since, n, last[grp])
        return out

    def close(self) -> None:
        self._conn.close()
