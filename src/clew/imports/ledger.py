"""What ``clew import profiles`` remembers between runs, in ``<data dir>/imports.db``: each
imported row's content hash (the ledger), each import run, and the review queue of
probable matches waiting for a person to confirm or reject; plus the shape of the identify
events that an import and a confirmation send.

The ledger is written only after the row's event is durable in the log, so a crash in
between re-sends that event on the next run (its ``messageId`` is the same, and resolving
an identify event twice changes nothing further).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from clew._sqlite import open_sqlite, transaction
from clew.backends import open_existing_store, open_log
from clew.config import Settings
from clew.events import Event, format_time
from clew.identity.identifiers import ANONYMOUS_ID, USER_ID, Identifier
from clew.log.base import Message
from clew.topics import EVENTS_TOPIC

_SCHEMA = """
CREATE TABLE IF NOT EXISTS imported_rows (
    source TEXT NOT NULL,
    row_id TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    message_id TEXT NOT NULL,
    import_id TEXT NOT NULL,
    imported_ms INTEGER NOT NULL,
    PRIMARY KEY (source, row_id)
);
CREATE TABLE IF NOT EXISTS imports (
    import_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    rows_read INTEGER NOT NULL,
    imported INTEGER NOT NULL,
    unchanged INTEGER NOT NULL,
    invalid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    review_id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    record_id TEXT NOT NULL,
    other_kind TEXT NOT NULL CHECK (other_kind IN ('profile', 'record')),
    other_id TEXT NOT NULL,
    link_type TEXT NOT NULL,
    link_value TEXT NOT NULL,
    probability REAL NOT NULL,
    match_weight REAL NOT NULL,
    record TEXT NOT NULL,
    other TEXT NOT NULL,
    import_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'confirmed', 'rejected')),
    decided_ms INTEGER,
    message_id TEXT,
    UNIQUE (source, record_id, other_kind, other_id)
);
"""

ReviewStatus = Literal["pending", "confirmed", "rejected"]

_COUNTS = ("rows_read", "imported", "unchanged", "invalid")
_MESSAGE_NAMESPACE = uuid.UUID("3f5d0c52-7a51-4c1e-9a0e-51f3c8f0b6a4")


class ProfileImportError(Exception):
    """An import or review request that cannot be done; the message says what to do."""


class ReviewNotFoundError(ProfileImportError, LookupError):
    """No review has this id."""


class ReviewDecidedError(ProfileImportError):
    """The review was confirmed or rejected already."""


class ReviewNotReadyError(ProfileImportError):
    """A side of the review is in no profile (not processed yet, or gone since)."""


@dataclass(slots=True, frozen=True)
class LedgerRow:
    """One row to remember as imported: its content hash and the event that carried it."""

    row_id: str
    content_hash: str
    message_id: str


@dataclass(slots=True, frozen=True)
class ReviewEntry:
    """A probable match between an imported record and a profile (``other_kind ==
    "profile"``) or another record of the same source, both sides as the matcher saw them
    (``record``, ``other``: field → value). ``link_type``/``link_value`` is the identifier
    that confirming it links the record to. ``review_id`` is 0 before it is stored."""

    review_id: int
    source: str
    record_id: str
    other_kind: Literal["profile", "record"]
    other_id: str
    link_type: str
    link_value: str
    probability: float
    match_weight: float
    record: dict[str, str]
    other: dict[str, str]
    import_id: str
    created_ms: int
    status: ReviewStatus = "pending"
    decided_ms: int | None = None
    message_id: str | None = None


_COLUMNS = tuple(f.name for f in fields(ReviewEntry))


class ImportLedger:
    """``imports.db``. Thread-safe; several processes may open it (SQLite WAL)."""

    def __init__(self, path: Path) -> None:
        # FULL: a ledger row lost in a power loss would re-import that row, which is
        # harmless, but a lost review decision would be asked again.
        self._conn = open_sqlite(path, _SCHEMA, synchronous="FULL")
        # Forgotten rows are zeroed in the file, not left in free pages (docs/privacy.md).
        self._conn.execute("PRAGMA secure_delete = ON")
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._conn) as conn:
            yield conn

    def hashes(self, source: str) -> dict[str, str]:
        """Row id → content hash last imported, for every row ``source`` ever imported."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT row_id, content_hash FROM imported_rows WHERE source = ?", (source,)
            ).fetchall()
        return dict(rows)

    def record_import(
        self,
        import_id: str,
        source: str,
        file: str,
        started_ms: int,
        counts: Mapping[str, int],
        rows: Sequence[LedgerRow],
        reviews: Sequence[ReviewEntry],
    ) -> list[ReviewEntry]:
        """Remember one import run, its imported rows and its review candidates, in one
        transaction. A candidate pair already in the queue is refreshed if still pending and
        left alone if it was decided (a rejected pair is never asked again). Returns the
        candidates with their review ids."""
        stored: list[ReviewEntry] = []
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO imports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (import_id, source, file, started_ms, *(counts[k] for k in _COUNTS)),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO imported_rows VALUES (?, ?, ?, ?, ?, ?)",
                [(source, *astuple(r), import_id, started_ms) for r in rows],
            )
            for e in reviews:
                conn.execute(
                    "INSERT INTO reviews (source, record_id, other_kind, other_id, link_type, "
                    "link_value, probability, match_weight, record, other, import_id, "
                    "created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (source, record_id, other_kind, other_id) DO UPDATE SET "
                    "link_type = excluded.link_type, link_value = excluded.link_value, "
                    "probability = excluded.probability, match_weight = excluded.match_weight, "
                    "record = excluded.record, other = excluded.other, "
                    "import_id = excluded.import_id WHERE status = 'pending'",
                    (
                        *astuple(e)[1:9],
                        json.dumps(e.record, ensure_ascii=False),
                        json.dumps(e.other, ensure_ascii=False),
                        e.import_id,
                        e.created_ms,
                    ),
                )
                found = _review(
                    conn,
                    "source = ? AND record_id = ? AND other_kind = ? AND other_id = ?",
                    (e.source, e.record_id, e.other_kind, e.other_id),
                )
                if found and found[0].status == "pending":
                    stored.append(found[0])
        return stored

    def reviews(
        self, source: str | None = None, status: ReviewStatus | None = "pending"
    ) -> list[ReviewEntry]:
        """Review entries, oldest first; by default the pending ones of every source."""
        clauses, args = [], []
        if source is not None:
            clauses.append("source = ?")
            args.append(source)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        with self._lock:
            return _review(self._conn, " AND ".join(clauses) or "1", tuple(args))

    def review(self, review_id: int) -> ReviewEntry | None:
        with self._lock:
            found = _review(self._conn, "review_id = ?", (review_id,))
        return found[0] if found else None

    def decide(
        self, review_id: int, status: ReviewStatus, decided_ms: int, message_id: str | None
    ) -> bool:
        """Mark a pending review confirmed or rejected; ``False`` if it was not pending
        (another operator decided it first)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE reviews SET status = ?, decided_ms = ?, message_id = ? "
                "WHERE review_id = ? AND status = 'pending'",
                (status, decided_ms, message_id, review_id),
            )
            return cur.rowcount == 1

    def forget(
        self,
        identifiers: Collection[tuple[str, str]],
        profile_ids: Collection[str],
        *,
        dry_run: bool = False,
    ) -> list[str]:
        """Remove what names a person: ledger rows of their records (a record of source
        ``s`` is the identifier ``(s_id, row id)``) and review entries with one of their
        records, profiles or identifiers on either side. Returns where each was (table and
        key, without personal data); ``dry_run`` only looks. A later import of a file that
        still holds the person imports them again: remove them from the source too."""
        ids, pids = set(identifiers), set(profile_ids)
        with self._tx() as conn:
            rows = [
                (source, row_id)
                for source, row_id in conn.execute("SELECT source, row_id FROM imported_rows")
                if (f"{source}_id", row_id) in ids
            ]
            reviews = [
                review_id
                for review_id, source, record_id, kind, other_id, link_type, link_value in (
                    conn.execute(
                        "SELECT review_id, source, record_id, other_kind, other_id, link_type, "
                        "link_value FROM reviews"
                    )
                )
                if (f"{source}_id", record_id) in ids
                or (link_type, link_value) in ids
                or (kind == "profile" and other_id in pids)
                or (kind == "record" and (f"{source}_id", other_id) in ids)
            ]
            if not dry_run:
                conn.executemany("DELETE FROM imported_rows WHERE source = ? AND row_id = ?", rows)
                conn.executemany("DELETE FROM reviews WHERE review_id = ?", [(r,) for r in reviews])
        where = [f"imported_rows of source {source}" for source, _ in rows]
        return where + [f"reviews, review {r}" for r in reviews]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _column(name: str, value: Any) -> Any:
    return json.loads(value) if name in ("record", "other") else value


def _review(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[ReviewEntry]:
    rows = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM reviews WHERE {where} ORDER BY review_id",
        args,
    ).fetchall()
    return [
        ReviewEntry(**{k: _column(k, v) for k, v in zip(_COLUMNS, r, strict=True)}) for r in rows
    ]


# -- the events an import sends -------------------------------------------------------------


def message_id(*parts: str) -> str:
    """A ``messageId`` derived from ``parts`` (the same parts, the same id)."""
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, "\x1f".join(parts)))


def identify_event(
    source: str,
    row_id: str,
    mid: str,
    when: datetime,
    traits: Mapping[str, str],
    clew: dict[str, Any],
) -> Event:
    """The identify event of one imported record: ``traits``, the row id as the
    ``<source>_id`` external id, and ``clew`` as ``context.clew``."""
    ts = format_time(when)
    external = {"id": row_id, "type": f"{source}_id", "collection": "users", "encoding": "none"}
    return Event(
        type="identify",
        message_id=mid,
        timestamp=ts,
        received_at=ts,
        original_timestamp=ts,
        source_id=source,
        traits=dict(traits),
        context={"externalIds": [external], "clew": clew},
    )


def match_doc(link: Identifier, weight: float) -> dict[str, Any]:
    """``context.clew.match`` (see :func:`clew.identity.identifiers.extract`)."""
    return {"id_type": link.id_type, "value": link.value, "match_weight": weight}


def profile_key(link: Identifier) -> bytes:
    """The log key of an event linked to a profile through ``link``: for a user or
    anonymous id, the key the validate stage gives that person's events."""
    if link.id_type in (USER_ID, ANONYMOUS_ID):
        return link.value.encode()
    return str(link).encode()


def append_events(settings: Settings, messages: Sequence[Message]) -> None:
    """Append to the ``events`` topic; returns once durable."""
    log = open_log(settings)
    try:
        log.append_sync(EVENTS_TOPIC, messages)
    finally:
        log.close()


def encode(event: Event) -> bytes:
    return msgspec.json.encode(event)


def to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _now() -> datetime:
    return datetime.now(UTC)


# -- the review queue -----------------------------------------------------------------------


def _ledger(settings: Settings) -> ImportLedger:
    path = settings.imports_path
    if not path.exists():
        raise ReviewNotFoundError(
            f"no import has run in {settings.data_dir} (is --data-dir right?)"
        )
    return ImportLedger(path)


def pending_reviews(settings: Settings, source: str | None = None) -> list[ReviewEntry]:
    """Review candidates waiting for a decision, oldest first (``source``: only its)."""
    if not (settings.imports_path).exists():
        return []
    ledger = _ledger(settings)
    try:
        return ledger.reviews(source)
    finally:
        ledger.close()


def _pending(ledger: ImportLedger, review_id: int) -> ReviewEntry:
    entry = ledger.review(review_id)
    if entry is None:
        raise ReviewNotFoundError(
            f"no review {review_id}; `clew import reviews` lists the pending ones"
        )
    if entry.status != "pending":
        raise ReviewDecidedError(f"review {review_id} was {entry.status} already")
    return entry


def _decide(
    ledger: ImportLedger, review_id: int, status: ReviewStatus, when: datetime, mid: str | None
) -> ReviewEntry:
    if not ledger.decide(review_id, status, to_ms(when), mid):
        raise ReviewDecidedError(f"review {review_id} was decided by someone else meanwhile")
    entry = ledger.review(review_id)
    assert entry is not None
    return entry


def confirm_review(
    settings: Settings, review_id: int, *, clock: Callable[[], datetime] = _now
) -> ReviewEntry:
    """Link the review's record to the other side: an identify event carrying the record's
    row id and ``context.clew.match`` (the other side's identifier, the match weight), and
    no traits. Returns the review as decided.

    Raises :class:`ReviewNotFoundError`, :class:`ReviewDecidedError`, and
    :class:`ReviewNotReadyError` when either side is in no profile: the import's events
    are not processed yet (start ``clew serve`` and retry), or the matched profile was
    deleted or split since (reject the review)."""
    ledger = _ledger(settings)
    try:
        entry = _pending(ledger, review_id)
        record = Identifier(f"{entry.source}_id", entry.record_id)
        link = Identifier(entry.link_type, entry.link_value)
        _check_resolved(settings, record, link, entry.other_kind)
        when = clock().astimezone(UTC)
        mid = message_id(entry.source, "review", str(review_id))
        clew = {
            "import": entry.import_id,
            "review": review_id,
            "match": match_doc(link, entry.match_weight),
        }
        event = identify_event(entry.source, entry.record_id, mid, when, {}, clew)
        # The event's id derives from the review: a confirmation repeated after a crash
        # before the decision is stored sends the same event again, which changes nothing.
        append_events(settings, [Message(encode(event), key=profile_key(link))])
        return _decide(ledger, review_id, "confirmed", when, mid)
    finally:
        ledger.close()


def reject_review(
    settings: Settings, review_id: int, *, clock: Callable[[], datetime] = _now
) -> ReviewEntry:
    """Dismiss the review: nothing is linked, and later imports do not suggest the pair
    again. Raises :class:`ReviewNotFoundError` or :class:`ReviewDecidedError`."""
    ledger = _ledger(settings)
    try:
        _pending(ledger, review_id)
        return _decide(ledger, review_id, "rejected", clock(), None)
    finally:
        ledger.close()


def _check_resolved(settings: Settings, record: Identifier, link: Identifier, kind: str) -> None:
    store = open_existing_store(settings)
    try:
        for ident in (record, link):
            if store is not None and store.lookup(ident.id_type, ident.value) is not None:
                continue
            if ident == link and kind == "profile" and store is not None:
                raise ReviewNotReadyError(
                    f"no profile holds {ident} any more (deleted or split since the import); "
                    "reject this review"
                )
            raise ReviewNotReadyError(
                f"{ident} is in no profile yet: the import's events are not processed "
                "(is `clew serve` running?); retry once it has caught up"
            )
    finally:
        if store is not None:
            store.close()
