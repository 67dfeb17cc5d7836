"""The replay of dead letters.

:func:`replay_dlq` reads the rows to replay through :class:`~clew.dlq.snapshot.DlqSnapshot`
and validates them again (:mod:`clew.dlq.revalidate`) against their source's *current* tracking
plan: an event that now passes lands in the ``events`` topic, one that still fails goes back
to the ``dlq`` topic as a new row (``dlq_id`` ``<old id>~<replay id>``, ``replay_of`` the old
id) with its new reason.

Exactly once, however often a replay dies and is run again:

- every replayed row gets an outcome in the ledger (``landed``, ``still_bad`` or
  ``duplicate``), and a row with an outcome is never replayed again;
- a landing claims the event's ``messageId`` in the dedup index with the origin
  ``replay:<dlq_id>``. An id claimed by another origin (the event was accepted some other way,
  or another row carries it) makes the row a ``duplicate``; the row's own earlier claim (a run
  that died before appending) lets it through again. An event already in the lake ``events``
  table with the same source and ``messageId`` is a duplicate too, even once its claim expired;
- each batch is written ahead to the ledger with the log's end offsets before its records are
  appended, and every appended record carries a ``replay_of`` header. The next run first
  reconciles a batch left behind by a run that died between the append and the ledger update:
  rows whose records are in the log after those offsets are done, the others are replayed.

One row never stops the others: a row whose kept event cannot be decoded at all is reported
(:attr:`ReplayReport.unreadable`), logged and left as it is; a row that makes revalidation
raise goes back to the ``dlq`` topic with reason ``stage_failure`` (stage
:data:`REPLAY_STAGE`, the error as its message), counted ``still_bad``, and the replay goes
on.

Only one replay runs per data directory at a time (:class:`ReplayInProgressError`).
"""

from __future__ import annotations

import fcntl
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

from clew._datadir import DLQ_REPLAY_LOCK, lock_path
from clew._errors import describe
from clew.config import Settings
from clew.dlq.ledger import (
    DUPLICATE,
    LANDED,
    STILL_BAD,
    LedgerItem,
    ReplayLedger,
    reconcile,
)
from clew.dlq.records import REPLAY_HEADER, STAGE_FAILURE, DeadLetter
from clew.dlq.revalidate import Plans, revalidate
from clew.dlq.snapshot import DlqFilter, DlqRow, DlqSnapshot
from clew.events import Event, Rejection
from clew.log.base import Log, Message, Position
from clew.schema.event_checks import Blocked
from clew.topics import DLQ_TOPIC, EVENTS_TOPIC

logger = logging.getLogger(__name__)

# The ``stage`` of a row put back because revalidating it raised (reason ``stage_failure``).
REPLAY_STAGE = "dlq-replay"
# Ids of unreadable rows a report keeps (the count is exact).
_UNREADABLE_IDS = 20

_encoder = msgspec.json.Encoder()


class _Claims(Protocol):
    """What a replay needs of the dedup index (:func:`clew.backends.open_dedup`)."""

    def claim(self, items: Sequence[tuple[str, str]], now_ms: int) -> set[int]: ...


class ReplayError(RuntimeError):
    """A replay cannot run; the message says what to do."""


class ReplayInProgressError(ReplayError):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"another `clew dlq replay` is running on {data_dir}; wait for it to finish "
            "(an interrupted replay is resumed by running it again)"
        )


@dataclass(slots=True)
class ReplayReport:
    replay_id: str
    dry_run: bool
    selected: int = 0
    landed: int = 0
    still_bad: int = 0
    duplicates: int = 0
    skipped: int = 0
    recovered: int = 0
    # Rows whose kept event cannot be decoded: left as they are, with the first few ids.
    unreadable: int = 0
    unreadable_ids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    still_bad_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def replayed(self) -> int:
        return self.landed + self.still_bad + self.duplicates

    @property
    def events_per_s(self) -> float:
        return self.replayed / self.elapsed_s if self.elapsed_s > 0 else 0.0


def new_replay_id() -> str:
    """A short random id such as ``r3fa2c1d0``; it ends the ids of the rows a replay puts
    back, so it is kept short (the ledger records when each replay ran)."""
    return "r" + secrets.token_hex(4)


def _unreadable(report: ReplayReport, row: DlqRow, exc: Exception) -> None:
    report.unreadable += 1
    if len(report.unreadable_ids) < _UNREADABLE_IDS:
        report.unreadable_ids.append(row.dlq_id)
    logger.error(
        "replay: dead letter %s cannot be decoded (%s); left in the queue as it is",
        row.dlq_id,
        describe(exc),
    )


def _dead_letter(row: DlqRow, refused: Blocked | Rejection, replay_id: str) -> DeadLetter:
    blocked = refused if isinstance(refused, Blocked) else None
    rej = refused.rejection if isinstance(refused, Blocked) else refused
    return DeadLetter(
        reason=rej.reason,
        message=rej.message,
        payload=row.payload,
        source_id=row.source_id,
        received_at=row.received_at.isoformat(),
        raw_partition=row.raw_partition,
        raw_offset=row.raw_offset,
        index=row.index,
        message_id=rej.message_id or row.message_id,
        event_type=rej.event_type or row.event_type,
        event_name=rej.event_name or row.event_name,
        violations=blocked.violations if blocked is not None else [],
        schema_versions=blocked.schema_versions if blocked is not None else {},
        normalized=blocked.normalized if blocked is not None else None,
        dlq_id=f"{row.dlq_id}~{replay_id}",
        replay_of=row.dlq_id,
        stage=REPLAY_STAGE if rej.reason == STAGE_FAILURE else None,
    )


class _ReplayLock:
    def __init__(self, data_dir: Path) -> None:
        path = lock_path(data_dir, DLQ_REPLAY_LOCK)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise ReplayInProgressError(data_dir) from None

    def release(self) -> None:
        self._handle.close()


def replay_dlq(
    settings: Settings,
    filters: DlqFilter,
    *,
    dry_run: bool = False,
    log: Log | None = None,
    batch_size: int = 2000,
    on_start: Callable[[ReplayReport], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay the rows ``filters`` selects that were not replayed yet (see the module
    docstring). ``log`` defaults to the configured log, opened and closed here.
    ``on_start`` gets the report once the rows are counted (``selected``, ``skipped``);
    ``on_progress`` the number of rows finished after each batch. A dry run writes nothing
    and detects duplicates only against the lake and within the run.

    Raises :class:`ReplayInProgressError` when another replay runs on the data directory;
    any other exception leaves finished batches recorded, so running again resumes."""
    from clew.backends import open_dedup, open_log

    started = time.monotonic()
    lock = _ReplayLock(settings.data_dir)
    resources: list[Callable[[], None]] = [lock.release]
    try:
        ledger = ReplayLedger(settings.state_path)
        resources.append(ledger.close)
        if log is None:
            log = open_log(settings)
            resources.append(log.close)
        report = ReplayReport(new_replay_id(), dry_run)
        if not dry_run:
            report.recovered = reconcile(ledger, log)
        dedup = open_dedup(settings)
        resources.append(dedup.close)
        plans = Plans(settings)
        resources.append(plans.close)
        snapshot = DlqSnapshot(settings.lake_location, ledger)
        resources.append(snapshot.close)
        selected = snapshot.count(filters, replayed=False)
        report.selected = min(selected, filters.limit) if filters.limit is not None else selected
        report.skipped = snapshot.count(filters, replayed=True)
        if on_start is not None:
            on_start(report)
        seen: set[str] = set()
        # A batch's appends run while the next batch is validated; it is marked done with
        # the next one's write-ahead, or at the end.
        in_flight: _InFlight | None = None
        for number, rows in enumerate(snapshot.to_replay(filters, batch_size)):
            in_flight = _replay_batch(
                report,
                rows,
                plans,
                dedup,
                ledger,
                log,
                f"{report.replay_id}/{number}",
                seen,
                in_flight,
                on_progress,
            )
        if in_flight is not None:
            in_flight.wait()
            if in_flight.batch_id is not None:
                ledger.finish(in_flight.batch_id)
            if on_progress is not None:
                on_progress(in_flight.rows)
        report.elapsed_s = time.monotonic() - started
        return report
    finally:
        for close in reversed(resources):
            close()


@dataclass(slots=True)
class _InFlight:
    batch_id: str | None
    rows: int
    appends: list[Future[list[Position]]]

    def wait(self) -> None:
        for fut in self.appends:
            fut.result()


def _revalidate_rows(
    report: ReplayReport, rows: list[DlqRow], plans: Plans, items: list[LedgerItem]
) -> tuple[list[tuple[DlqRow, Event, bytes | None]], list[DeadLetter]]:
    """Revalidate ``rows``: the events that may land (with the JSON each row kept, if any),
    and the dead letters of the rows still refused, whose outcomes go into ``items``, as do
    those of rows already in the lake."""
    landings: list[tuple[DlqRow, Event, bytes | None]] = []
    letters: list[DeadLetter] = []
    for row in rows:
        plan = plans.get(row.source_id)
        try:
            result, kept = revalidate(row, plan)
        except msgspec.DecodeError as exc:
            _unreadable(report, row, exc)
            continue
        except Exception as exc:
            # One row must not stop the replay; it goes back to the queue with the error.
            logger.exception("replay: revalidating dead letter %s failed", row.dlq_id)
            result = Rejection(STAGE_FAILURE, describe(exc), row.message_id)
            kept = None
        if not isinstance(result, Event):
            letter = _dead_letter(row, result, report.replay_id)
            letters.append(letter)
            items.append((row.dlq_id, STILL_BAD, letter.reason, letter.dlq_id))
            report.still_bad_reasons[letter.reason] += 1
        elif row.in_lake:
            items.append((row.dlq_id, DUPLICATE, None, None))
        else:
            landings.append((row, result, kept))
    return landings, letters


def _replay_batch(
    report: ReplayReport,
    rows: list[DlqRow],
    plans: Plans,
    dedup: _Claims,
    ledger: ReplayLedger,
    log: Log,
    batch_id: str,
    seen: set[str],
    previous: _InFlight | None,
    on_progress: Callable[[int], None] | None,
) -> _InFlight:
    """Validate one batch and claim its ids; once the previous batch's appends are durable,
    write this one ahead (marking the previous one done) and start its appends."""
    items: list[LedgerItem] = []
    landings, letters = _revalidate_rows(report, rows, plans, items)
    claims = [
        (f"{ev.source_id}/{ev.message_id}", f"replay:{row.dlq_id}") for row, ev, _ in landings
    ]
    if report.dry_run:
        dupes = set()
        for i, (key, _) in enumerate(claims):
            if key in seen:
                dupes.add(i)
            seen.add(key)
    else:
        dupes = dedup.claim(claims, time.time_ns() // 1_000_000)
    events: list[Message] = []
    for i, (row, ev, kept) in enumerate(landings):
        if i in dupes:
            items.append((row.dlq_id, DUPLICATE, None, None))
            continue
        items.append((row.dlq_id, LANDED, None, None))
        mark = ((REPLAY_HEADER, row.dlq_id.encode()),)
        value = kept if kept is not None else _encoder.encode(ev)
        events.append(Message(value, key=ev.identity_key, headers=mark))
    outcomes = Counter(item[1] for item in items)
    report.landed += outcomes[LANDED]
    report.still_bad += outcomes[STILL_BAD]
    report.duplicates += outcomes[DUPLICATE]
    finished = None
    if previous is not None:
        previous.wait()
        finished = previous.batch_id
    if not report.dry_run:
        dead = [
            Message(
                _encoder.encode(d),
                key=d.source_id.encode(),
                headers=((REPLAY_HEADER, (d.replay_of or "").encode()),),
            )
            for d in letters
        ]
        offsets = {t: log.end_offsets(t) for t in (EVENTS_TOPIC, DLQ_TOPIC)}
        ledger.write_ahead(batch_id, report.replay_id, offsets, items, finished)
    if previous is not None and on_progress is not None:
        on_progress(previous.rows)
    if report.dry_run:
        return _InFlight(None, len(rows), [])
    appends = [log.append(t, ms) for t, ms in ((EVENTS_TOPIC, events), (DLQ_TOPIC, dead)) if ms]
    return _InFlight(batch_id, len(rows), appends)
