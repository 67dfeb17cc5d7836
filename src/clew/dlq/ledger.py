"""The replay ledger: what each replayed dead letter became (``landed``, ``still_bad`` or
``duplicate``), in ``state.db`` (table ``dlq_replay_batches``, view ``dlq_replays``).

Each batch of a replay is written ahead with the log's end offsets before its records are
appended; :func:`reconcile` settles a batch a replay that died left behind, from the
``replay_of`` header of the records that reached the log (:mod:`clew.dlq.replay`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from clew._sqlite import transaction
from clew.dlq.records import REPLAY_HEADER
from clew.log.base import Log

if TYPE_CHECKING:
    import pyarrow as pa

LANDED = "landed"
STILL_BAD = "still_bad"
DUPLICATE = "duplicate"

# One row per batch (writing a row per replayed dead letter would cost a replay a tenth of its
# speed); ``dlq_replays`` shows one row per dead letter. A batch written ahead keeps the log's
# end offsets until its records are known to be in the log; its rows are not done until then.
_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS dlq_replay_batches (
    batch_id TEXT PRIMARY KEY,
    replay_id TEXT NOT NULL,
    items TEXT NOT NULL,
    start_offsets TEXT,
    replayed_at REAL NOT NULL
);
CREATE VIEW IF NOT EXISTS dlq_replays AS
SELECT json_extract(j.value, '$[0]') AS dlq_id, b.replay_id,
       json_extract(j.value, '$[1]') AS outcome, json_extract(j.value, '$[2]') AS reason,
       json_extract(j.value, '$[3]') AS new_dlq_id, b.replayed_at
FROM dlq_replay_batches b, json_each(b.items) j WHERE b.start_offsets IS NULL;
"""

# (dlq_id, outcome, new reason, new dlq_id) of one row of a batch.
LedgerItem = tuple[str, str, str | None, str | None]


@dataclass(frozen=True, slots=True)
class ReplayEntry:
    dlq_id: str
    replay_id: str
    outcome: str
    reason: str | None
    new_dlq_id: str | None
    replayed_at: datetime


@dataclass(slots=True)
class PendingBatch:
    batch_id: str
    start_offsets: dict[str, dict[int, int]]
    dlq_ids: set[str]


class ReplayLedger:
    """What each replayed row became, in ``state.db`` (the ``dlq_replays`` view).
    ``synchronous=FULL``: a batch written ahead survives power loss just as the log records
    appended after it do."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_LEDGER_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def _done(self, where: str = "", params: Sequence[Any] = ()) -> Iterator[ReplayEntry]:
        for replay_id, items, at in self._conn.execute(
            "SELECT replay_id, items, replayed_at FROM dlq_replay_batches "
            f"WHERE start_offsets IS NULL{where} ORDER BY replayed_at",
            params,
        ):
            when = datetime.fromtimestamp(at, tz=UTC)
            for dlq_id, outcome, reason, new_id in orjson.loads(items):
                yield ReplayEntry(dlq_id, replay_id, outcome, reason, new_id, when)

    def arrow(self) -> pa.Table:
        """Every outcome, as an Arrow table to join with the lake in DuckDB."""
        import pyarrow as pa

        cols: list[list[Any]] = [[], [], [], [], [], []]
        for replay_id, items, at in self._conn.execute(
            "SELECT replay_id, items, replayed_at FROM dlq_replay_batches "
            "WHERE start_offsets IS NULL"
        ):
            rows = orjson.loads(items)
            for i, col in enumerate(zip(*rows, strict=True)):
                cols[(0, 2, 3, 4)[i]].extend(col)
            cols[1].extend([replay_id] * len(rows))
            cols[5].extend([at] * len(rows))
        names = ("dlq_id", "replay_id", "outcome", "reason", "new_dlq_id", "replayed_at")
        types = [pa.string()] * 5 + [pa.float64()]
        return pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})

    def history(self, dlq_id: str) -> list[ReplayEntry]:
        """The replays of the row ``dlq_id`` belongs to: of the first-time row and of every
        row a replay made from it, oldest first."""
        root = dlq_id.split("~", 1)[0]
        found = self._done(
            " AND (instr(items, ?) OR instr(items, ?))", (f'["{root}"', f'["{root}~')
        )
        return [e for e in found if e.dlq_id == root or e.dlq_id.startswith(root + "~")]

    def write_ahead(
        self,
        batch_id: str,
        replay_id: str,
        offsets: dict[str, dict[int, int]],
        items: list[LedgerItem],
        finished: str | None = None,
    ) -> None:
        """Record ``items`` as not yet done, with the log's end offsets before their records
        are appended; and mark the batch ``finished`` done, in the same transaction."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO dlq_replay_batches VALUES (?, ?, ?, ?, ?)",
                (
                    batch_id,
                    replay_id,
                    orjson.dumps(items).decode(),
                    orjson.dumps(offsets, option=orjson.OPT_NON_STR_KEYS).decode(),
                    time.time(),
                ),
            )
            if finished is not None:
                conn.execute(
                    "UPDATE dlq_replay_batches SET start_offsets = NULL WHERE batch_id = ?",
                    (finished,),
                )

    def finish(self, batch_id: str, done: set[str] | None = None) -> int:
        """Mark the batch done: all its rows, or only those in ``done`` (the others are
        forgotten, to be replayed again). Returns how many rows are done."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT items FROM dlq_replay_batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                return 0
            items = [i for i in orjson.loads(row[0]) if done is None or i[0] in done]
            if items:
                conn.execute(
                    "UPDATE dlq_replay_batches SET items = ?, start_offsets = NULL "
                    "WHERE batch_id = ?",
                    (orjson.dumps(items).decode(), batch_id),
                )
            else:
                conn.execute("DELETE FROM dlq_replay_batches WHERE batch_id = ?", (batch_id,))
        return len(items)

    def pending(self) -> list[PendingBatch]:
        out = []
        for batch_id, items, offsets in self._conn.execute(
            "SELECT batch_id, items, start_offsets FROM dlq_replay_batches "
            "WHERE start_offsets IS NOT NULL"
        ).fetchall():
            starts = {
                topic: {int(p): off for p, off in parts.items()}
                for topic, parts in orjson.loads(offsets).items()
            }
            out.append(PendingBatch(batch_id, starts, {i[0] for i in orjson.loads(items)}))
        return out

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn)


def reconcile(ledger: ReplayLedger, log: Log) -> int:
    """Settle the batches a replay that died left written ahead: rows whose records reached
    the log are done; the others will be replayed. Returns how many rows were done."""
    done_total = 0
    for batch in ledger.pending():
        wanted = batch.dlq_ids
        found: set[str] = set()
        for topic, starts in batch.start_offsets.items():
            ends = log.end_offsets(topic)
            for partition, start in starts.items():
                offset = start
                while offset < ends.get(partition, 0):
                    records = log.read(topic, partition, offset, 5000)
                    if not records:
                        break
                    for rec in records:
                        mark = rec.header(REPLAY_HEADER)
                        if mark is not None and mark.decode() in wanted:
                            found.add(mark.decode())
                    offset = records[-1].offset + 1
        done_total += ledger.finish(batch.batch_id, found)
    return done_total
