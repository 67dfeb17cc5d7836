"""Runs queued data-subject requests: resolve the person, suppress or unsuppress them, erase
them from every store, verify nothing is left, and write the audit record.

`clew serve` runs one :class:`PrivacyRunner` in a background thread that looks for requests
every ``privacy.poll_interval_s`` seconds (and at once when the API queues one);
``clew privacy request --wait`` runs one in its own process when no server is running.

What each type does (``subject`` = every identifier of the profile the identifier belongs to,
merged-away profiles included; just the identifier itself when no profile has it):

- ``suppress``: the subject's identifiers join the suppression list;
- ``unsuppress``: every suppression that includes one of them is lifted;
- ``suppress_with_delete``: suppress (permanently), then erase and verify;
- ``delete``: suppress *temporarily*, erase and verify, then lift that temporary suppression
  when the request ends, so the person may come back as a new profile afterwards. A
  time-range ``delete`` (``since``/``until``) removes events only and keeps the profile: it
  neither suppresses nor verifies (the person's other data is meant to stay).

Before changing anything, the runner records the subject in the request's job
(:meth:`~clew.privacy.requests.RequestStore.record_subject`); a retry, or a request resumed
after a restart, erases that recorded set, together with anything resolving finds then.

Before erasing, the runner waits (up to ``settle_s``) until the stages have processed every
record that was already in the log when the suppression took effect, so an event in flight
cannot recreate the profile after its deletion.

Statuses: ``finished`` when every store erased without error and verify found no trace;
``partial`` when a store reported an error or traces remain (the audit says which store and
where, without personal data); ``failed`` when the request raised an exception on each of
:data:`MAX_ATTEMPTS` attempts (retried after :data:`RETRY_DELAYS_S`; every step is idempotent).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from clew.config import Settings
from clew.events import format_time
from clew.log.base import Log
from clew.privacy._salt import hash_normalised, load_salt
from clew.privacy.requests import DELETING, PrivacyRequest, RequestStore
from clew.privacy.subject import Subject, SubjectLike
from clew.privacy.suppression import (
    RELOAD_S,
    ListWriter,
    SuppressedHash,
    open_suppression_list,
)
from clew.store.base import ProfileStore
from clew.topics import CHANGES_TOPIC, DLQ_TOPIC, EVENTS_TOPIC, RAW_TOPIC, STAGE_TOPICS

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
RETRY_DELAYS_S = (5.0, 30.0)
# Topics in the order records flow through them: a later topic is waited for only once the
# stages feeding it have caught up.
_FLOW = (RAW_TOPIC, EVENTS_TOPIC, DLQ_TOPIC, CHANGES_TOPIC)
_MAX_TEXT = 500


class _StoreReport(Protocol):
    store: str
    removed: int
    detail: str
    error: str | None


class _ErasureReport(Protocol):
    @property
    def stores(self) -> Sequence[_StoreReport]: ...
    @property
    def ok(self) -> bool: ...


class _Trace(Protocol):
    store: str
    where: str


class _VerifyReport(Protocol):
    @property
    def traces(self) -> Sequence[_Trace]: ...
    @property
    def checked(self) -> Sequence[str]: ...
    @property
    def unreadable(self) -> Sequence[_Trace]: ...
    @property
    def clean(self) -> bool: ...


@dataclass(frozen=True)
class Operations:
    """What the runner calls for each store (``clew.privacy.erase`` and ``.verify``);
    replaceable in tests."""

    resolve_subject: Callable[[ProfileStore, str, str], SubjectLike]
    erase: Callable[..., _ErasureReport]
    verify: Callable[..., _VerifyReport]


def default_operations(settings: Settings) -> Operations:
    """The real operations; a subject is resolved through the profile graph and the lake."""
    # Imported on first use: erasure loads the lake's libraries, which the API does not need.
    from clew.privacy.erase import erase, resolve_person
    from clew.privacy.verify import verify

    def resolve(store: ProfileStore, id_type: str, value: str) -> Subject:
        return resolve_person(settings, store, id_type, value)

    return Operations(resolve, erase, verify)


class PrivacyRunner:
    """Executes requests from ``requests``. ``settle_s=None`` skips waiting for the stages
    (nothing consumes the log when no server runs). Call :meth:`start` for the polling
    thread, or :meth:`run` / :meth:`run_pending` directly."""

    def __init__(
        self,
        settings: Settings,
        *,
        log: Log,
        store: ProfileStore,
        requests: RequestStore | None = None,
        suppressions: ListWriter | None = None,
        settle_s: float | None = 30.0,
        stage_topics: dict[str, tuple[str, ...]] | None = None,
        operations: Operations | None = None,
    ) -> None:
        self._settings = settings
        self._log = log
        self._store = store
        self._salt = load_salt(settings)
        self.requests = requests or RequestStore(settings.privacy_path, self._salt)
        self.suppressions = suppressions or open_suppression_list(settings)
        # What this runner opened itself, and so closes.
        self._owned: list[Callable[[], None]] = []
        if requests is None:
            self._owned.append(self.requests.close)
        if suppressions is None:
            self._owned.append(self.suppressions.close)
        self._settle_s = settle_s
        self._stage_topics = stage_topics
        self._operations = operations
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Requeue requests a previous process left running, then poll in a thread."""
        requeued = self.requests.requeue_running()
        if requeued:
            logger.warning("resuming %d privacy request(s) interrupted by a restart", requeued)
        self._thread = threading.Thread(target=self._loop, name="clew-privacy", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for requests now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop polling; a request still running after ``timeout_s`` stays ``running`` and is
        resumed by the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._thread is None or not self._thread.is_alive():
            self.close()

    def close(self) -> None:
        """Close the stores this runner opened (not the log or the profile store)."""
        owned, self._owned = self._owned, []
        for close in owned:
            close()

    def _loop(self) -> None:
        interval = self._settings.privacy.poll_interval_s
        while not self._stop.is_set():
            try:
                self.run_pending()
            except Exception:
                logger.exception("privacy runner failed; retrying in %.1f s", interval)
            self._wake.wait(interval)
            self._wake.clear()

    # -- running requests -----------------------------------------------------------------

    def run_pending(self) -> int:
        """Run every due request; the number run."""
        done = 0
        while not self._stop.is_set():
            request = self.requests.claim()
            if request is None:
                break
            self._execute(request)
            done += 1
        return done

    def run(self, request_id: str) -> PrivacyRequest:
        """Run one request now if it is queued (retries included), and return it as it ends
        (or as it is when it was not queued)."""
        while True:
            request = self.requests.claim(request_id)
            if request is None:
                break
            self._execute(request)
            current = self.requests.get(request_id)
            if current is None or current.ended:
                break
            time.sleep(_retry_delay(current.attempts))
        found = self.requests.get(request_id)
        assert found is not None
        return found

    def _execute(self, request: PrivacyRequest) -> None:
        started = time.monotonic()
        redact = _Redactor([request.value or ""])
        public = request.public()
        audit: dict[str, Any] = {
            "request_id": request.id,
            "type": request.type,
            "requested_by": request.requested_by,
            "requested_at": public["created_at"],
            "started_at": public["started_at"],
            "subject": {"hash": request.subject_hash, "id_type": request.id_type},
            "attempts": request.attempts,
        }
        if request.since_ms is not None or request.until_ms is not None:
            audit["time_range"] = {"since": public["since"], "until": public["until"]}
        status: str | None = None
        try:
            status = self._perform(request, audit, redact)
        except _Interrupted:
            # Stopped while waiting for in-flight events: run it again on the next start.
            audit["retry_in_s"] = 0.0
        except Exception as exc:
            logger.exception("privacy request %s failed (attempt %d)", request.id, request.attempts)
            audit["error"] = redact(f"{type(exc).__name__}: {exc}")
            if request.attempts < MAX_ATTEMPTS:
                audit["retry_in_s"] = _retry_delay(request.attempts)
            else:
                status = "failed"
        finally:
            if request.type == "delete" and "suppression" in audit:
                try:
                    audit["suppression"]["lifted"] = self.suppressions.lift_request(request.id)
                except Exception as exc:
                    # The person's events stay refused until it is lifted: run the request
                    # again (its erasure is idempotent), never leave it running.
                    logger.exception(
                        "privacy request %s: lifting its suppression failed", request.id
                    )
                    audit["suppression"]["error"] = redact(f"{type(exc).__name__}: {exc}")
                    if status != "failed" or request.attempts < MAX_ATTEMPTS:
                        status = None
                        audit["retry_in_s"] = _retry_delay(request.attempts)
        audit["seconds"] = round(time.monotonic() - started, 3)
        audit["ended_at"] = format_time(datetime.now(UTC))
        if status is None:
            self.requests.retry_later(request.id, audit["retry_in_s"], audit)
            return
        audit["status"] = status
        self.requests.finish(request.id, status, audit)
        logger.info("privacy request %s (%s) %s", request.id, request.type, status)

    def _perform(self, request: PrivacyRequest, audit: dict[str, Any], redact: _Redactor) -> str:
        assert request.value is not None, "a queued request keeps its identifier"
        ops = self._operations or default_operations(self._settings)
        subject = self._subject(request, ops)
        redact.add(v for _, v in subject.identifiers)
        redact.add(subject.profile_ids)
        hashes = self._hashes(subject, request)
        audit["subject"].update(
            profiles=len(subject.profile_ids),
            identifiers=dict(sorted(Counter(h.id_type for h in hashes).items())),
        )
        if request.type == "suppress":
            added = self.suppressions.add(request.id, hashes, temporary=False)
            audit["suppression"] = {"added": added, "temporary": False}
            return "finished"
        if request.type == "unsuppress":
            lifted = self.suppressions.lift(h.hash for h in hashes)
            audit["suppression"] = {"lifted": lifted}
            return "finished"
        assert request.type in DELETING
        whole_person = request.since_ms is None and request.until_ms is None
        if request.type == "suppress_with_delete" or whole_person:
            temporary = request.type == "delete"
            added = self.suppressions.add(request.id, hashes, temporary=temporary)
            audit["suppression"] = {"added": added, "temporary": temporary}
            audit["in_flight"] = self._settle()
            if self._stop.is_set():
                raise _Interrupted
        report = ops.erase(
            self._settings,
            subject,
            store=self._store,
            log=self._log,
            since_ms=request.since_ms,
            until_ms=request.until_ms,
        )
        remaining: list[str] = []
        stores = []
        for s in report.stores:
            stores.append(
                {
                    "store": s.store,
                    "removed": s.removed,
                    "detail": redact(s.detail or ""),
                    "error": None if s.error is None else redact(s.error),
                }
            )
            if s.error is not None:
                remaining.append(f"{s.store}: erasure failed: {redact(s.error)}")
        audit["erasure"] = {"ok": bool(report.ok), "stores": stores}
        if whole_person:
            # privacy.db still holds this request's identifier until the request ends (then
            # it is wiped); `clew privacy verify` afterwards scans it too.
            db = self._settings.privacy_path
            own = [db, *(db.with_name(db.name + s) for s in ("-wal", "-journal"))]
            result = ops.verify(self._settings, subject, store=self._store, log=self._log, skip=own)
            traces = [{"store": t.store, "where": redact(t.where)} for t in result.traces]
            audit["verify"] = {
                "clean": bool(result.clean),
                "checked": list(result.checked),
                "traces": traces,
            }
            if result.unreadable:
                audit["verify"]["unreadable"] = [
                    {"store": t.store, "where": redact(t.where)} for t in result.unreadable
                ]
            remaining.extend(f"{t['store']}: {t['where']}" for t in traces)
            clean = bool(result.clean)
        else:
            audit["verify"] = {"skipped": "a time-range deletion keeps the rest of the profile"}
            clean = True
        if remaining:
            audit["remaining"] = remaining
        return "finished" if report.ok and clean and not remaining else "partial"

    def _subject(self, request: PrivacyRequest, ops: Operations) -> Subject:
        """The person, recorded in the job before anything is changed: what an earlier
        attempt recorded (the profile graph may be gone since) with whatever resolving the
        identifier finds now (an event in flight may have added an identifier)."""
        assert request.value is not None
        try:
            found = Subject.of(ops.resolve_subject(self._store, request.id_type, request.value))
        except Exception:
            if request.subject is None:
                raise
            # The recorded set suffices to erase; resolving again only adds to it.
            logger.warning("privacy request %s: resolving again failed", request.id, exc_info=True)
            return request.subject
        subject = found if request.subject is None else request.subject.union(found)
        self.requests.record_subject(request.id, subject)
        return subject

    def _hashes(self, subject: Subject, request: PrivacyRequest) -> list[SuppressedHash]:
        assert request.value is not None
        pairs = dict.fromkeys([*subject.identifiers, (request.id_type, request.value)])
        return [SuppressedHash(t, hash_normalised(self._salt, t, v)) for t, v in pairs]

    def _settle(self) -> dict[str, Any]:
        """Wait until every stage has processed what was in the log when the suppression
        took effect (stage by stage, in the order records flow)."""
        if self._settle_s is None:
            return {"waited": False}
        started = time.monotonic()
        deadline = started + self._settle_s
        # Every checker (collector, validate stage) reloads the list within RELOAD_S.
        self._stop.wait(RELOAD_S + 0.1)
        groups = self._stage_topics
        if groups is None:
            groups = STAGE_TOPICS
        settled = True
        for topic in _FLOW:
            consumers = [g for g, topics in groups.items() if topic in topics]
            if consumers and not self._caught_up(topic, consumers, deadline):
                settled = False
                logger.warning(
                    "stages did not process topic %s within %.0f s; erasing anyway",
                    topic,
                    self._settle_s,
                )
                break
        return {"waited": True, "settled": settled, "seconds": round(time.monotonic() - started, 3)}

    def _caught_up(self, topic: str, groups: Iterable[str], deadline: float) -> bool:
        target = self._log.end_offsets(topic)
        pending = list(groups)
        while pending:
            pending = [g for g in pending if self._behind(g, topic, target)]
            if not pending:
                return True
            if time.monotonic() > deadline or self._stop.wait(0.05):
                return False
        return True

    def _behind(self, group: str, topic: str, target: dict[int, int]) -> bool:
        """Whether ``group`` has a record of ``topic`` before ``target`` still to process.
        Below the end offset there may be only what no consumer is given (a Kafka
        transaction's commit marker, a shredded record), so a gap is checked by reading."""
        committed = self._log.committed(group, topic)
        for p, end in target.items():
            at = committed.get(p, 0)
            if at < end:
                batch = self._log.read(topic, p, at, 1)
                if batch and batch[0].offset < end:
                    return True
        return False


def _retry_delay(attempts: int) -> float:
    return RETRY_DELAYS_S[min(attempts, len(RETRY_DELAYS_S)) - 1] if attempts else 0.0


class _Interrupted(Exception):
    """The runner was stopped before erasing; the request goes back to the queue."""


class _Redactor:
    """Replaces the person's raw identifiers (and profile ids) in free text from other
    components (error messages, store details) before it goes into the audit record."""

    def __init__(self, values: Iterable[str]) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        self._values.update(v for v in values if v)
        if not self._values:
            return
        # Longest first, so a value containing another is replaced whole; short values only
        # as whole words, so that "7" does not eat every digit of a count or time.
        parts = [
            re.escape(v) if len(v) >= 4 else rf"(?<!\w){re.escape(v)}(?!\w)"
            for v in sorted(self._values, key=len, reverse=True)
        ]
        self._pattern = re.compile("|".join(parts), re.IGNORECASE)

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub("<redacted>", text)
        return text[:_MAX_TEXT]
