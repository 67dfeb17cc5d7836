"""Data-subject requests as durable jobs in ``privacy.db``.

A request names one identifier (``email:ada@x.test``) and what to do for the person behind
it: ``suppress``, ``unsuppress``, ``delete`` or ``suppress_with_delete``. Its status moves
``received`` → ``running`` → ``finished`` | ``partial`` | ``failed`` (a failed attempt may
first go back to ``received`` for a retry; see :class:`~clew.privacy.runner.PrivacyRunner`).

Before erasing anything, a running request records its subject (the person's profile ids and
every identifier, :class:`~clew.privacy.subject.Subject`; ``record_subject``): every later
attempt, in this process or after a restart, erases that set.

The raw identifier and the recorded subject are kept only while the request has not ended:
ending it (any of the three final statuses) overwrites both with NULL, with SQLite's
``secure_delete`` on and the WAL checkpointed, so no byte of them stays in the file. What
remains is the salted hash and the audit record, which holds no personal data either.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clew._sqlite import open_sqlite
from clew.events import format_time, parse_time
from clew.identity.identifiers import ANONYMOUS_ID, USER_ID
from clew.privacy._salt import identifier_hash, normalise_identifier
from clew.privacy.subject import Subject

REQUEST_TYPES = ("suppress", "unsuppress", "delete", "suppress_with_delete")
DELETING = frozenset({"delete", "suppress_with_delete"})
STATUSES = ("received", "running", "finished", "partial", "failed")
ENDED = frozenset({"finished", "partial", "failed"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    id_type TEXT NOT NULL,
    identifier TEXT,
    subject_hash TEXT NOT NULL,
    since_ms INTEGER,
    until_ms INTEGER,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    audit TEXT,
    subject TEXT
);
CREATE INDEX IF NOT EXISTS requests_queue ON requests (status, created_at);
"""

# Spellings of the two SDK identifiers people copy from event payloads.
_ID_TYPE_ALIASES = {"userId": USER_ID, "anonymousId": ANONYMOUS_ID}
_ID_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MAX_VALUE = 1024


class InvalidRequestError(ValueError):
    """A request that cannot be accepted; ``code`` is the API error code, the message says
    what to send instead."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownRequestError(LookupError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no privacy request {request_id!r}; `clew privacy list` shows them")


class RequestNotRunningError(LookupError):
    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"privacy request {request_id!r} is not running any more (it ended, or a restart "
            "put it back in the queue, from which it runs again)"
        )


def parse_subject_identifier(text: str) -> tuple[str, str]:
    """``id_type:value``, split at the first colon and normalised like identity resolution
    does (emails lower-cased); ``userId``/``anonymousId`` are accepted for the id types.

    >>> parse_subject_identifier("email: Ada@X.test")
    ('email', 'ada@x.test')
    >>> parse_subject_identifier("userId:urn:crm:42")
    ('user_id', 'urn:crm:42')
    """
    id_type, sep, value = text.partition(":")
    id_type = _ID_TYPE_ALIASES.get(id_type.strip(), id_type.strip())
    value = value.strip()
    if not sep or not value or not _ID_TYPE.fullmatch(id_type):
        raise InvalidRequestError(
            "invalid_identifier",
            "write the identifier as id_type:value, e.g. email:ada@shop.test or user_id:42",
        )
    if len(value) > _MAX_VALUE:
        raise InvalidRequestError(
            "invalid_identifier", f"an identifier value may be at most {_MAX_VALUE} characters"
        )
    return id_type, normalise_identifier(id_type, value)


def parse_instant(value: str | datetime | None, name: str) -> int | None:
    """An ISO-8601 time (UTC when it has no offset) as epoch milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        try:
            dt = parse_time(value)
        except (ValueError, OverflowError, TypeError):
            raise InvalidRequestError(
                "invalid_time", f"{name} must be an ISO-8601 time such as 2024-05-01T00:00:00Z"
            ) from None
    return int(dt.timestamp() * 1000)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else format_time(datetime.fromtimestamp(ts, tz=UTC))


def _iso_ms(ms: int | None) -> str | None:
    return None if ms is None else format_time(datetime.fromtimestamp(ms / 1000, tz=UTC))


@dataclass(frozen=True, slots=True)
class PrivacyRequest:
    """One request. ``value`` is the raw identifier value, ``None`` once the request ended."""

    id: str
    type: str
    id_type: str
    value: str | None
    subject_hash: str
    since_ms: int | None
    until_ms: int | None
    requested_by: str
    status: str
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    audit: dict[str, Any] | None
    # The person as recorded before the first erasure; None until then and once ended.
    subject: Subject | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def public(self) -> dict[str, Any]:
        """The request as the API and CLI show it: never the raw identifier."""
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "id_type": self.id_type,
            "subject_hash": self.subject_hash,
            "since": _iso_ms(self.since_ms),
            "until": _iso_ms(self.until_ms),
            "requested_by": self.requested_by,
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "audit": self.audit,
        }


_COLUMNS = (
    "id, type, id_type, identifier, subject_hash, since_ms, until_ms, requested_by, status, "
    "attempts, created_at, started_at, finished_at, audit, subject"
)


def _row(row: tuple[Any, ...]) -> PrivacyRequest:
    names = [c.strip() for c in _COLUMNS.split(",")]
    values = dict(zip(names, row, strict=True))
    values["value"] = values.pop("identifier")
    audit = values.pop("audit")
    subject = values.pop("subject")
    return PrivacyRequest(
        **values,
        audit=json.loads(audit) if audit else None,
        subject=Subject.loads(subject) if subject else None,
    )


class RequestStore:
    """The job store; thread-safe, and several processes may open it (the API and the CLI
    create requests, the runner in `clew serve` claims them)."""

    def __init__(self, path: Path, salt: bytes) -> None:
        self._conn = open_sqlite(path, _SCHEMA, synchronous="FULL")
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(requests)")}
        if "subject" not in columns:
            # A privacy.db written before jobs recorded their subject.
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                self._conn.execute("ALTER TABLE requests ADD COLUMN subject TEXT")
        # Deleted or overwritten content is zeroed in the file, not just unlinked.
        self._conn.execute("PRAGMA secure_delete = ON")
        self._salt = salt
        self._lock = threading.Lock()

    def create(
        self,
        type_: str,
        identifier: str,
        *,
        requested_by: str,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> PrivacyRequest:
        """Queue a request; raises :class:`InvalidRequestError` when it cannot be run."""
        if type_ not in REQUEST_TYPES:
            raise InvalidRequestError(
                "invalid_type", f"type must be one of {', '.join(REQUEST_TYPES)}; got {type_!r}"
            )
        id_type, value = parse_subject_identifier(identifier)
        since_ms, until_ms = parse_instant(since, "since"), parse_instant(until, "until")
        if (since_ms is not None or until_ms is not None) and type_ not in DELETING:
            raise InvalidRequestError(
                "invalid_time", "since and until apply to delete and suppress_with_delete only"
            )
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise InvalidRequestError("invalid_time", "since must be earlier than until")
        request_id = f"pr_{secrets.token_hex(8)}"
        row = (
            request_id,
            type_,
            id_type,
            value,
            identifier_hash(self._salt, id_type, value),
            since_ms,
            until_ms,
            requested_by,
            "received",
            time.time(),
        )
        with self._lock:
            self._conn.execute(
                "INSERT INTO requests (id, type, id_type, identifier, subject_hash, since_ms, "
                "until_ms, requested_by, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                row,
            )
        found = self.get(request_id)
        assert found is not None
        return found

    def get(self, request_id: str) -> PrivacyRequest | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,)
            ).fetchone()
        return _row(row) if row else None

    def recent(self, limit: int = 100, status: str | None = None) -> list[PrivacyRequest]:
        """The newest ``limit`` requests, optionally with one status."""
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM requests {where} ORDER BY created_at DESC, id LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [_row(r) for r in rows]

    def claim(self, request_id: str | None = None) -> PrivacyRequest | None:
        """Mark the oldest due ``received`` request (or the given one, if it is received)
        ``running`` and return it; ``None`` when there is none. Atomic across processes."""
        now = time.time()
        pick = (
            "SELECT id FROM requests WHERE id = ? AND status = 'received'"
            if request_id is not None
            else "SELECT id FROM requests WHERE status = 'received' AND not_before <= ? "
            "ORDER BY created_at, id LIMIT 1"
        )
        with self._lock:
            row = self._conn.execute(
                f"UPDATE requests SET status = 'running', attempts = attempts + 1, "
                f"started_at = ? WHERE id = ({pick}) AND status = 'received' "
                f"RETURNING {_COLUMNS}",
                (now, request_id if request_id is not None else now),
            ).fetchone()
        return _row(row) if row else None

    def record_subject(self, request_id: str, subject: Subject) -> None:
        """Keep ``subject`` in the running request ``request_id`` (replacing what an earlier
        attempt recorded); durable when this returns. Raises :class:`RequestNotRunningError`
        when no running request has that id."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE requests SET subject = ? WHERE id = ? AND status = 'running'",
                (subject.dumps(), request_id),
            )
        if cur.rowcount != 1:
            raise RequestNotRunningError(request_id)

    def retry_later(self, request_id: str, delay_s: float, audit: dict[str, Any]) -> None:
        """Put a running request back in the queue, due in ``delay_s`` seconds."""
        with self._lock:
            self._conn.execute(
                "UPDATE requests SET status = 'received', not_before = ?, audit = ? "
                "WHERE id = ? AND status = 'running'",
                (time.time() + delay_s, json.dumps(audit), request_id),
            )

    def finish(self, request_id: str, status: str, audit: dict[str, Any]) -> None:
        """End a request with ``status`` (finished, partial or failed) and its audit record;
        the raw identifier and the recorded subject are wiped from the file."""
        if status not in ENDED:
            raise ValueError(f"a request ends finished, partial or failed, not {status!r}")
        with self._lock:
            self._conn.execute(
                "UPDATE requests SET status = ?, identifier = NULL, subject = NULL, "
                "finished_at = ?, audit = ? WHERE id = ?",
                (status, time.time(), json.dumps(audit, ensure_ascii=False), request_id),
            )
        self.checkpoint()

    def requeue_running(self) -> int:
        """Put requests left ``running`` by a process that died back in the queue (every
        step of a request is idempotent, so running it again is safe)."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE requests SET status = 'received', not_before = 0 WHERE status = 'running'"
            )
        return int(cur.rowcount)

    def counts(self) -> Counter[str]:
        """Requests by status."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT status, count(*) FROM requests GROUP BY status"
            ).fetchall()
        return Counter(dict(rows))

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it, so overwritten values do not
        linger in old WAL frames. Best effort: a reader in another process may hold frames a
        moment longer; the next checkpoint takes them."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._conn.close()
