"""The monitor stage (group ``monitor``): counts accepted (``events``) and dead-lettered
(``dlq``) events per series and hour of event time, and when an hour closes judges every
series against its baseline (:mod:`clew.monitor.volume`); alerts go to the ``changes``
topic, the log, the metrics and an optional webhook.

Exactly-once counting: the counts of a batch and the log offsets after it are written in one
SQLite transaction, and ``on_assign`` seeks to the stored offsets, so a crash anywhere never
counts a record twice or skips one. The log commit that follows is only for lag figures.

An hour is judged once: the verdicts, the alerts to publish and the "judged through" mark are
written in one transaction, then the alerts are appended to ``changes`` and marked published.
A crash between the append and the mark appends them again on restart, with the same
``alert_id`` (at-least-once, like every stage; receivers drop repeats by id).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from clew._sqlite import transaction
from clew.dlq.records import STAGE_FAILURE
from clew.log.base import Consumer, Message, Record, TopicPartition
from clew.monitor.alerts import (
    ALERT_KIND,
    VolumeAlert,
    WebhookSender,
    encode_alert,
    log_alert,
    log_key,
    volume_alert,
)
from clew.monitor.db import ADD_COUNTER, CountBatch, open_monitor_db
from clew.monitor.records import RecordReader, series_key
from clew.monitor.status import MonitorStatus, read_status
from clew.monitor.volume import (
    ALL_VERSIONS,
    Assessment,
    HourCount,
    MonitorPolicy,
    SeriesHistory,
    SeriesKey,
    assess_group,
    hour_of,
    hour_start,
    settle_repeats,
)
from clew.stages.base import Stage
from clew.topics import CHANGES_TOPIC, DLQ_TOPIC, EVENTS_TOPIC

logger = logging.getLogger(__name__)

# What time it is now, as an aware datetime (the event time the monitor judges hours by).
# Not :class:`clew.clock.Clock`, which gives milliseconds.
TimeSource = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def count_records(
    reader: RecordReader, records: list[Record]
) -> tuple[CountBatch, dict[TopicPartition, int], Counter[str], str, list[str]]:
    """The counts of a batch of ``events`` and ``dlq`` records, the log offsets after it, the
    stage's tallies, the latest ``receivedAt`` of its events and those of its dead letters."""
    batch = CountBatch()
    offsets: dict[TopicPartition, int] = {}
    tally: Counter[str] = Counter()
    latest_event = ""
    latest_dead: list[str] = []
    # The count slots of each series and hour seen in this batch, by what names them in an
    # event record: most records of a batch repeat a few series, which then cost a lookup.
    seen: dict[tuple[str, str | None, str, str, int], tuple[list[int], list[int]]] = {}
    events = 0
    for rec in records:
        offsets[(rec.topic, rec.partition)] = rec.offset + 1
        dead = rec.topic == DLQ_TOPIC
        if not dead:
            found = reader.event_series(rec.value)
            if found is not None:
                series, received_at = found
                slots = seen.get(series)
                if slots is None:
                    slots = seen[series] = batch.slots(series_key(*series[:4]), series[4])
                slots[0][0] += 1
                slots[1][0] += 1
                events += 1
                # The validate stage writes every receivedAt in one fixed UTC format, so
                # the latest is the greatest string.
                if received_at and received_at > latest_event:
                    latest_event = received_at
                continue
        obs = reader.dead_letter(rec.value) if dead else reader.event(rec.value)
        if obs is None:
            tally["records_skipped"] += 1
            continue
        if obs.dlq_reason == STAGE_FAILURE:
            # Set aside by a stage downstream of validation: not something a source sent
            # that was refused (an event among them was counted accepted already), so it
            # stays out of every series; /health and /metrics report it per stage.
            tally["records_set_aside"] += 1
            continue
        tally["records_dlq" if dead else "records_events"] += 1
        batch.add(obs)
        if obs.received_at:
            if dead:
                latest_dead.append(obs.received_at)
            elif obs.received_at > latest_event:
                latest_event = obs.received_at
    if events:
        tally["records_events"] += events
    return batch, offsets, tally, latest_event, latest_dead


class MonitorStage(Stage):
    """Volume monitors over ``events`` and ``dlq``; state in SQLite at ``state_path``.

    ``clock`` says what time it is (event time): an hour is judged once ``clock()`` is past
    its end plus ``policy.grace`` and the stage has caught up to that time (it saw an event
    received after it, or its topics are empty). Alerts go to the ``changes`` topic, which
    must exist, and, when ``webhook_url`` is set, are POSTed there in the background.
    Call :meth:`shutdown` once the stage has stopped, to release the database and the webhook
    thread.
    """

    group = "monitor"
    topics = (EVENTS_TOPIC, DLQ_TOPIC)

    def __init__(
        self,
        state_path: Path,
        policy: MonitorPolicy | None = None,
        clock: TimeSource = utc_now,
        webhook_url: str | None = None,
        *,
        webhook_timeout_s: float = 5.0,
        webhook_retries: int = 2,
    ) -> None:
        self.policy = policy or MonitorPolicy()
        self._path = state_path
        self._clock = clock
        self._db = open_monitor_db(state_path)
        self._ids: dict[SeriesKey, int] = {}
        self._reader = RecordReader()
        self._handled = False
        self._seen_through: datetime | None = None
        self._webhook = (
            WebhookSender(webhook_url, timeout_s=webhook_timeout_s, retries=webhook_retries)
            if webhook_url
            else None
        )
        self._webhook_queued: set[str] = set()
        self._resend_checked = False
        # Alerts left unpublished by a crash are published on the first tick.
        self._publish_due = True
        # On the first start, the hours already closed are history, not news.
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('judged_through', ?)",
            (self._closed_through(self._now()),),
        )

    # -- stage hooks ----------------------------------------------------------------------

    def on_assign(self, consumer: Consumer, assignment: Sequence[TopicPartition]) -> None:
        stored = dict(
            ((t, p), off)
            for t, p, off in self._db.execute("SELECT topic, partition, next_offset FROM offsets")
        )
        for tp in assignment:
            if tp in stored:
                consumer.seek(tp[0], tp[1], stored[tp])

    def handle(self, records: list[Record], consumer: Consumer) -> None:
        batch, offsets, tally, latest_event, latest_dead = count_records(self._reader, records)
        self._store(batch, offsets, tally)
        consumer.commit(offsets=offsets)
        self._handled = True
        if tally["records_skipped"]:
            logger.warning("monitor skipped %d unreadable records", tally["records_skipped"])
        self._advance_seen([latest_event, *latest_dead] if latest_event else latest_dead)

    def tick(self, consumer: Consumer) -> None:
        idle, self._handled = not self._handled, False
        self._collect_webhook_results()
        if self._judge_closed_hours(idle):
            self._publish_due = True
        if self._publish_due:
            self._publish(consumer)
            self._publish_due = False
        if not self._resend_checked:
            self._resend_checked = True
            self._resend_webhooks()

    def close(self, consumer: Consumer) -> None:
        self._collect_webhook_results()

    def shutdown(self) -> None:
        """Stop the webhook thread (undelivered alerts are sent after the next start) and
        close the database."""
        if self._webhook is not None:
            self._webhook.close()
            self._collect_webhook_results()
        self._db.close()

    def status(self) -> MonitorStatus:
        return read_status(self._path)

    # -- counting -------------------------------------------------------------------------

    def _advance_seen(self, stamps: list[str]) -> None:
        for stamp in stamps:
            try:
                moment = datetime.fromisoformat(stamp)
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            if self._seen_through is None or moment > self._seen_through:
                self._seen_through = moment

    def _series_id(self, key: SeriesKey, bucket: int) -> int:
        sid = self._ids.get(key)
        if sid is None:
            row = self._db.execute(
                "SELECT id FROM series WHERE event_name = ? AND source_id = ? AND app_version = ?",
                (key.event_name, key.source_id, key.app_version),
            ).fetchone()
            if row is None:
                row = self._db.execute(
                    "INSERT INTO series (event_name, source_id, app_version, first_bucket, "
                    "last_bucket) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (key.event_name, key.source_id, key.app_version, bucket, bucket),
                ).fetchone()
            sid = int(row[0])
            self._ids[key] = sid
        return sid

    def _store(
        self, batch: CountBatch, offsets: dict[TopicPartition, int], tally: Counter[str]
    ) -> None:
        db = self._db
        try:
            with transaction(db):
                spans: dict[int, tuple[int, int]] = {}
                rows = []
                for (key, bucket), (accepted, dlq) in batch.counts.items():
                    sid = self._series_id(key, bucket)
                    lo, hi = spans.get(sid, (bucket, bucket))
                    spans[sid] = (min(lo, bucket), max(hi, bucket))
                    rows.append((bucket, sid, accepted, dlq))
                db.executemany(
                    "INSERT INTO counts VALUES (?, ?, ?, ?) ON CONFLICT (bucket, series) DO UPDATE "
                    "SET accepted = accepted + excluded.accepted, dlq = dlq + excluded.dlq",
                    rows,
                )
                db.executemany(
                    "UPDATE series SET first_bucket = min(first_bucket, ?), "
                    "last_bucket = max(last_bucket, ?) WHERE id = ?",
                    [(lo, hi, sid) for sid, (lo, hi) in spans.items()],
                )
                db.executemany(
                    "INSERT INTO dlq_reasons VALUES (?, ?, ?, ?, ?) ON CONFLICT (bucket, series, "
                    "reason) DO UPDATE SET n = n + excluded.n",
                    [
                        (bucket, self._ids[key], reason, n, batch.examples[(key, bucket, reason)])
                        for (key, bucket, reason), n in batch.reasons.items()
                    ],
                )
                db.executemany(
                    "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                    "DO UPDATE SET next_offset = excluded.next_offset",
                    [(t, p, off) for (t, p), off in offsets.items()],
                )
                db.executemany(ADD_COUNTER, list(tally.items()))
        except BaseException:
            # Ids handed out in the rolled-back transaction no longer exist.
            self._ids.clear()
            raise

    # -- judging --------------------------------------------------------------------------

    def _meta(self, name: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _now(self) -> datetime:
        now = self._clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now

    def _closed_through(self, now: datetime) -> int:
        """The last hour whose end plus the grace period has passed."""
        return hour_of(now - self.policy.grace) - 1

    def _judge_closed_hours(self, idle: bool) -> int:
        now = self._now()
        closed_through = self._closed_through(now)
        done = self._meta("judged_through")
        assert done is not None
        oldest = closed_through - self.policy.catch_up_hours
        if done < oldest:
            logger.warning(
                "monitor was behind by %d hours; judging only the last %d",
                closed_through - done,
                self.policy.catch_up_hours,
            )
            done = oldest
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'judged_through'", (done,))
        judged = 0
        for bucket in range(done + 1, closed_through + 1):
            ready_at = hour_start(bucket + 1) + self.policy.grace
            if not (idle or (self._seen_through is not None and self._seen_through >= ready_at)):
                break
            self._judge(bucket, now)
            judged += 1
        if judged:
            self._prune(closed_through)
        return judged

    def _histories(
        self, bucket: int
    ) -> dict[tuple[str, str], dict[str, tuple[int, SeriesHistory]]]:
        p = self.policy
        wanted = {bucket, *range(bucket - p.trailing_hours, bucket)}
        wanted.update(bucket - 24 * d for d in range(1, p.seasonal_days + 1))
        wanted.update(bucket - 168 * w for w in range(1, p.weekly_weeks + 1))
        series = self._db.execute(
            "SELECT id, event_name, source_id, app_version, first_bucket FROM series "
            "WHERE first_bucket <= ? AND last_bucket >= ?",
            (bucket, bucket - p.lookback_hours),
        ).fetchall()
        counts: dict[int, dict[int, HourCount]] = {sid: {} for sid, *_ in series}
        marks = ",".join("?" * len(wanted))
        for b, sid, accepted, dlq in self._db.execute(
            f"SELECT bucket, series, accepted, dlq FROM counts WHERE bucket IN ({marks})",
            sorted(wanted),
        ):
            if sid in counts:
                counts[sid][b] = HourCount(accepted, dlq)
        groups: dict[tuple[str, str], dict[str, tuple[int, SeriesHistory]]] = defaultdict(dict)
        for sid, event_name, source_id, version, first in series:
            groups[(event_name, source_id)][version] = (sid, SeriesHistory(first, counts[sid]))
        return groups

    def _judge(self, bucket: int, now: datetime) -> None:
        previous = {
            sid: (b, direction if status in ("alert", "ongoing") else None)
            for sid, b, status, direction in self._db.execute(
                "SELECT series, bucket, status, direction FROM series_state"
            )
        }
        verdicts: list[tuple[int, SeriesKey, Assessment, str | None]] = []
        for (event_name, source_id), versions in self._histories(bucket).items():
            group = assess_group(bucket, {v: h for v, (_, h) in versions.items()}, self.policy)
            worst = max(
                (v for v in group if v != ALL_VERSIONS and group[v].dlq),
                key=lambda v: group[v].dlq,
                default=None,
            )
            for version, verdict in group.items():
                sid = versions[version][0]
                prev_bucket, prev_direction = previous.get(sid, (None, None))
                verdict = settle_repeats(verdict, prev_bucket, prev_direction)
                top_version = (
                    worst if version == ALL_VERSIONS else (version if verdict.dlq else None)
                )
                verdicts.append(
                    (sid, SeriesKey(event_name, source_id, version), verdict, top_version)
                )
        alerts = self._alerts(bucket, now, [v for v in verdicts if v[2].status == "alert"])
        db = self._db
        with transaction(db):
            db.executemany(
                "INSERT OR REPLACE INTO series_state VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        sid,
                        bucket,
                        a.status,
                        a.expected,
                        a.observed,
                        a.dlq,
                        a.change_pct,
                        a.direction,
                    )
                    for sid, _, a, _ in verdicts
                ],
            )
            webhook = "pending" if self._webhook is not None else "none"
            db.executemany(
                "INSERT OR IGNORE INTO alerts (alert_id, bucket, log_key, body, webhook) "
                "VALUES (?, ?, ?, ?, ?)",
                [(a.alert_id, bucket, log_key(a), encode_alert(a), webhook) for a in alerts],
            )
            db.executemany(
                ADD_COUNTER,
                list(Counter(f"alerts:{a.signals[0]}:{a.direction}" for a in alerts).items()),
            )
            db.execute("UPDATE meta SET value = ? WHERE name = 'judged_through'", (bucket,))
        for a in alerts:
            log_alert(a)

    def _alerts(
        self,
        bucket: int,
        now: datetime,
        verdicts: list[tuple[int, SeriesKey, Assessment, str | None]],
    ) -> list[VolumeAlert]:
        if not verdicts:
            return []
        # The most frequent reason of each series' dead letters, with its example message.
        reasons: dict[int, tuple[str | None, str | None]] = {}
        marks = ",".join("?" * len(verdicts))
        for sid, reason, example in self._db.execute(
            f"SELECT series, reason, example FROM dlq_reasons WHERE bucket = ? "
            f"AND series IN ({marks}) ORDER BY n DESC, reason",
            [bucket, *(sid for sid, *_ in verdicts)],
        ):
            reasons.setdefault(sid, (reason, example))
        return [
            volume_alert(
                key,
                bucket,
                a,
                top_dlq=reasons.get(sid, (None, None)),
                top_version=top_version,
                now=now,
            )
            for sid, key, a, top_version in verdicts
        ]

    def _prune(self, closed_through: int) -> None:
        cutoff = closed_through - self.policy.lookback_hours - 24
        db = self._db
        with transaction(db):
            db.execute("DELETE FROM counts WHERE bucket < ?", (cutoff,))
            db.execute("DELETE FROM dlq_reasons WHERE bucket < ?", (cutoff,))
            gone = db.execute("DELETE FROM series WHERE last_bucket < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM series_state WHERE series NOT IN (SELECT id FROM series)")
            db.execute(
                "DELETE FROM alerts WHERE bucket < ? AND published = 1 AND webhook != 'pending'",
                (cutoff,),
            )
        if gone:
            self._ids.clear()

    # -- publishing -----------------------------------------------------------------------

    def _publish(self, consumer: Consumer) -> None:
        pending = self._db.execute(
            "SELECT alert_id, log_key, body, webhook FROM alerts WHERE published = 0 "
            "ORDER BY bucket, alert_id"
        ).fetchall()
        if not pending:
            return
        messages = [
            Message(value=body, key=key, headers=(("kind", ALERT_KIND.encode()),))
            for _, key, body, _ in pending
        ]
        consumer.commit(offsets={}, produce={CHANGES_TOPIC: messages})
        self._db.executemany(
            "UPDATE alerts SET published = 1 WHERE alert_id = ?", [(a,) for a, *_ in pending]
        )
        for aid, _, body, webhook in pending:
            if webhook == "pending":
                self._queue_webhook(aid, body)

    def _queue_webhook(self, aid: str, body: bytes) -> None:
        if (
            self._webhook is not None
            and aid not in self._webhook_queued
            and self._webhook.send(aid, body)
        ):
            self._webhook_queued.add(aid)

    def _resend_webhooks(self) -> None:
        for aid, body in self._db.execute(
            "SELECT alert_id, body FROM alerts WHERE published = 1 AND webhook = 'pending' "
            "ORDER BY bucket"
        ).fetchall():
            self._queue_webhook(aid, body)

    def _collect_webhook_results(self) -> None:
        if self._webhook is None:
            return
        results = self._webhook.results()
        if results:
            self._db.executemany(
                "UPDATE alerts SET webhook = ? WHERE alert_id = ?",
                [("delivered" if ok else "failed", aid) for aid, ok in results],
            )
            self._webhook_queued.difference_update(aid for aid, _ in results)
