"""The request store and the salt: validation, the queue, and no raw identifier left in
privacy.db once a request has ended."""

from __future__ import annotations

import doctest
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import clew.privacy._salt
import clew.privacy.requests
import clew.privacy.subject
from clew.config import Settings
from clew.privacy._salt import identifier_hash, load_salt
from clew.privacy.requests import InvalidRequestError, RequestNotRunningError, RequestStore
from clew.privacy.subject import Subject

EMAIL = "ada.lovelace@analytical.test"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RequestStore]:
    s = RequestStore(tmp_path / "privacy.db", b"salt")
    yield s
    s.close()


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_doctests() -> None:
    assert doctest.testmod(clew.privacy._salt).failed == 0
    assert doctest.testmod(clew.privacy.requests).failed == 0
    assert doctest.testmod(clew.privacy.subject).failed == 0


def test_the_recorded_subject_survives_reopening_and_is_wiped_when_the_request_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "privacy.db"
    # A privacy.db from before jobs recorded their subject gains the column when opened.
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    old.close()
    store = RequestStore(path, b"salt")
    request = store.create("delete", f"email:{EMAIL}", requested_by="cli")
    assert store.claim() is not None
    ada = Subject(("p-ada",), (("email", EMAIL), ("user_id", "ada-1815")))
    store.record_subject(request.id, ada)
    store.close()

    store = RequestStore(path, b"salt")
    try:
        found = store.get(request.id)
        assert found is not None and found.subject == ada
        assert "subject" not in found.public()
        store.finish(request.id, "finished", {"status": "finished"})
        ended = store.get(request.id)
        assert ended is not None and ended.subject is None
        with pytest.raises(RequestNotRunningError):
            store.record_subject(request.id, ada)
    finally:
        store.close()
    assert b"ada-1815" not in file_bytes(path) and EMAIL.encode() not in file_bytes(path)


_OLD_SCHEMA = """
CREATE TABLE requests (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, id_type TEXT NOT NULL, identifier TEXT,
    subject_hash TEXT NOT NULL, since_ms INTEGER, until_ms INTEGER, requested_by TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, audit TEXT
);
"""


def test_salt_is_generated_once_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = load_salt(settings)
    salt_file = tmp_path / "data" / "privacy.salt"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert load_salt(settings) == first and len(first) == 64
    configured = Settings(data_dir=tmp_path / "data", privacy={"salt": "from-config"})
    assert load_salt(configured) == b"from-config"


def test_identifier_hash_normalises_email_and_depends_on_salt() -> None:
    assert identifier_hash(b"a", "email", " Ada@X.test") == identifier_hash(
        b"a", "email", "ada@x.test"
    )
    assert identifier_hash(b"a", "email", "ada@x.test") != identifier_hash(
        b"b", "email", "ada@x.test"
    )
    assert identifier_hash(b"a", "user_id", "Ada") != identifier_hash(b"a", "user_id", "ada")
    assert identifier_hash(b"a", "user_id", "42") != identifier_hash(b"a", "anonymous_id", "42")


@pytest.mark.parametrize(
    ("kind", "identifier", "since", "until", "code"),
    [
        ("erase", "email:a@x.test", None, None, "invalid_type"),
        ("delete", "ada@x.test", None, None, "invalid_identifier"),
        ("delete", "email:", None, None, "invalid_identifier"),
        ("delete", "bad type:1", None, None, "invalid_identifier"),
        ("delete", "user_id:1", "yesterday", None, "invalid_time"),
        ("delete", "user_id:1", "2024-02-01", "2024-01-01", "invalid_time"),
        ("suppress", "user_id:1", "2024-01-01", None, "invalid_time"),
    ],
)
def test_unusable_requests_are_refused_with_a_code(
    store: RequestStore,
    kind: str,
    identifier: str,
    since: str | None,
    until: str | None,
    code: str,
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        store.create(kind, identifier, requested_by="t", since=since, until=until)
    assert info.value.code == code
    assert store.recent() == []


def test_requests_are_claimed_oldest_first_once(store: RequestStore) -> None:
    a = store.create("suppress", "userId:a", requested_by="cli")
    b = store.create("delete", "email:B@X.test", requested_by="cli", since="2024-01-01")
    assert (a.status, a.id_type, a.value) == ("received", "user_id", "a")
    assert (b.value, b.since_ms) == ("b@x.test", 1_704_067_200_000)
    first = store.claim()
    assert first is not None and first.id == a.id and first.status == "running"
    assert first.attempts == 1 and first.started_at is not None
    second = store.claim()
    assert second is not None and second.id == b.id
    assert store.claim() is None
    assert store.counts() == {"running": 2}
    assert store.requeue_running() == 2
    assert store.claim(b.id) is not None
    assert [r.id for r in store.recent(status="received")] == [a.id]


def test_a_delayed_retry_is_not_claimed_before_it_is_due(store: RequestStore) -> None:
    req = store.create("delete", "user_id:1", requested_by="cli")
    assert store.claim() is not None
    store.retry_later(req.id, 60, {"error": "x"})
    assert store.claim() is None
    assert store.claim(req.id) is not None  # asked for by id (clew privacy request --wait)


def test_ending_a_request_wipes_the_raw_identifier_from_the_file(
    store: RequestStore, tmp_path: Path
) -> None:
    req = store.create("suppress_with_delete", f"email:{EMAIL}", requested_by="cli")
    db = tmp_path / "privacy.db"
    store.checkpoint()
    assert EMAIL.encode() in file_bytes(db)
    assert store.claim() is not None
    store.finish(req.id, "finished", {"status": "finished", "subject": {"hash": req.subject_hash}})
    done = store.get(req.id)
    assert done is not None and done.value is None and done.status == "finished"
    assert done.public()["audit"] == {"status": "finished", "subject": {"hash": req.subject_hash}}
    assert "ada.lovelace" not in str(done.public()) and EMAIL not in str(done.public())
    raw = file_bytes(db)
    assert EMAIL.encode() not in raw and b"ada.lovelace" not in raw
    assert req.subject_hash.encode() in raw
