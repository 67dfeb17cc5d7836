"""Erasing a person from every store of an embedded data directory (docs/privacy.md,
"Deletion and verification").

Whole-person erasure (no time range) removes, in this order, so that nothing flows from a
store not yet cleaned into one already cleaned:

1. the log: every record of every topic that carries the person (``Log.delete_where``,
   physical; the Kafka log makes them unreadable instead, ``clew.privacy._erase_kafka``). A
   ``raw`` record is a whole HTTP request and may hold other people's events as well; it
   cannot be rewritten, so it is deleted when it carries the person and either holds nobody
   else or the validate stage has already passed it (its events are then in
   ``events``; ``raw`` is only a buffer in front of validation). A mixed record not yet
   validated is kept and reported, and the request should run again once validation caught up;
2. the serving store: the profile with its identity graph and provenance, merged-away ids,
   traits, history and timers (``ProfileStore.delete_profile``), and separations naming the
   person's identifiers;
3. the lake, warm and cold (``clew.privacy._erase_lake``), under the lifecycle lock so that
   no tier move copies rows meanwhile: the person's ``events`` and ``dlq`` rows in the
   partitions the person index names (every partition of a table it cannot vouch for), their
   ``customer_profiles``, ``identities`` and ``audience_changes`` rows, then every earlier
   file version;
4. the person index's entries of the person;
5. ``destinations.db``: queued and dead-lettered records of the person, and delivery errors
   quoting them; ``imports.db``: ledger and review rows of their records;
6. a signed deletion notice to each destination with ``deletion_notices: true``.

Each SQLite file written is then checkpointed and, if old bytes remain, rebuilt
(``clew.privacy._erase_sqlite``); the serving store's file only when it is the SQLite backend
(a Redis store deletes through its API alone; docs/privacy.md says what Redis keeps). A time
range (``since_ms``/``until_ms``, event time) removes only the person's events in it from the
log, the lake, the serving store's history and the outbox, and leaves the profile.

What is left is in the :class:`ErasureReport`: per store, how much was removed, and any error,
with the person's identifiers and profile ids masked (the report goes into the audit record).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from clew._locations import LakeLocation
from clew.config import Settings
from clew.destinations.config import Destinations
from clew.identity.rules import IdentityRules
from clew.lake.person_index import NULL_DAY, PersonIndex
from clew.log.base import Log, Record
from clew.privacy._erase_lake import DLQ, EVENTS, LakeEraser, is_table
from clew.privacy._erase_match import Matcher
from clew.privacy._erase_report import ErasureReport as ErasureReport
from clew.privacy._erase_report import StoreReport as StoreReport
from clew.privacy._erase_sqlite import scrub
from clew.privacy._salt import normalise_identifier
from clew.privacy._verify_bytes import needles
from clew.privacy.subject import Subject as Subject
from clew.store.base import ProfileStore
from clew.topics import RAW_TOPIC

if TYPE_CHECKING:
    from clew.log.shredding import ShreddingLog
    from clew.privacy.pii import PiiPolicy

_MASK = "<redacted>"
# Rounds of widening a subject through the lake (each follows one more link).
_MAX_ROUNDS = 8


def resolve_subject(store: ProfileStore, id_type: str, value: str) -> Subject:
    """The person behind one identifier (``id_type`` ``profile_id`` names a profile): their
    whole profile, or just that identifier when no profile holds it."""
    if id_type == "profile_id":
        live = store.resolve(value)
        if live is None:
            return Subject((value,), ())
    else:
        value = normalise_identifier(id_type, value)
        live = store.lookup(id_type, value)
        if live is None:
            return Subject((), ((id_type, value),))
    profile = store.get(live)
    if profile is None:
        return Subject((live,), () if id_type == "profile_id" else ((id_type, value),))
    identifiers = [(e.id_type, e.value) for e in profile.identities]
    if id_type != "profile_id" and (id_type, value) not in identifiers:
        identifiers.append((id_type, value))
    return Subject((profile.profile_id, *(r.from_id for r in profile.merged)), tuple(identifiers))


def resolve_person(settings: Settings, store: ProfileStore, id_type: str, value: str) -> Subject:
    """:func:`resolve_subject`, widened through the lake's ``identities`` and
    ``customer_profiles`` tables (warm and cold): every profile id and identifier linked to
    the person there is added, until nothing new turns up. The lake still knows a person whose
    profile graph was already deleted, or who is only in the lake."""
    subject = resolve_subject(store, id_type, value)
    roots = [settings.lake_location, settings.cold_location]
    for _ in range(_MAX_ROUNDS):
        wider = subject.union(_lake_links(roots, subject))
        if wider == subject:
            break
        subject = wider
    return subject


def _lake_links(roots: list[LakeLocation], subject: Subject) -> Subject:
    """What the lake's profile tables link to ``subject`` (one step)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = set(subject.identifiers)
    pids = pa.array(sorted(set(subject.profile_ids)), pa.string())
    values = pa.array(sorted({v for _, v in wanted}), pa.string())
    profile_ids: list[str] = []
    identifiers: list[tuple[str, str]] = []
    for root in roots:
        dt = root.table("identities").open_if_exists()
        if dt is not None:
            rows = _strings(dt.to_pyarrow_dataset().to_table(["id_type", "value", "profile_id"]))
            hit = pc.or_(
                pc.is_in(rows["value"], value_set=values),
                pc.is_in(rows["profile_id"], value_set=pids),
            )
            for row in rows.filter(pc.fill_null(hit, False)).to_pylist():
                t, v, pid = row["id_type"], row["value"], row["profile_id"]
                if (t, v) in wanted or pid in subject.profile_ids:
                    identifiers.append((t, v))
                    profile_ids.append(pid)
        dt = root.table("customer_profiles").open_if_exists()
        if dt is not None and len(pids):
            rows = _strings(dt.to_pyarrow_dataset().to_table(["profile_id", "merged_ids"]))
            merged = rows["merged_ids"].combine_chunks()
            hit = pc.fill_null(pc.is_in(rows["profile_id"], value_set=pids), False).to_pylist()
            named = pc.is_in(pc.list_flatten(merged), value_set=pids)
            parents = pc.filter(pc.list_parent_indices(merged), pc.fill_null(named, False))
            for i in set(parents.to_pylist()) | {i for i, h in enumerate(hit) if h}:
                row = rows.slice(i, 1).to_pylist()[0]
                profile_ids += [row["profile_id"], *(row["merged_ids"] or [])]
    return Subject(
        tuple(p for p in profile_ids if p), tuple((t, v) for t, v in identifiers if t and v)
    )


def _strings(table: Any) -> Any:
    """``table`` with string views as plain strings (the lake's reader may return views)."""
    import pyarrow as pa

    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_string_view(t):
            t = pa.string()
        elif pa.types.is_list_view(t) or (
            pa.types.is_list(t) and pa.types.is_string_view(t.value_type)
        ):
            t = pa.list_(pa.string())
        fields.append(pa.field(f.name, t))
    return table.cast(pa.schema(fields))


def _pii(settings: Settings) -> PiiPolicy | None:
    if not settings.privacy.pii:
        return None
    from clew.privacy._salt import load_salt
    from clew.privacy.pii import PiiPolicy

    return PiiPolicy(settings.privacy.pii, load_salt(settings))


class _Eraser:
    def __init__(
        self,
        settings: Settings,
        subject: Subject,
        store: ProfileStore,
        log: Log,
        since_ms: int | None,
        until_ms: int | None,
    ) -> None:
        self.settings, self.subject, self.store, self.log = settings, subject, store, log
        self.since_ms, self.until_ms = since_ms, until_ms
        self.whole = since_ms is None and until_ms is None
        self.rules: IdentityRules = settings.identity.rules
        self.matcher = Matcher(subject, self.rules, since_ms, until_ms, _pii(settings))
        self.needles = needles(subject.identifiers, subject.profile_ids)
        self._secrets = sorted(
            {v for _, v in subject.identifiers} | set(subject.profile_ids), key=len, reverse=True
        )
        # Longest first; short values only as whole words ("7" must not eat every digit).
        parts = [
            re.escape(v) if len(v) >= 4 else rf"(?<!\w){re.escape(v)}(?!\w)"
            for v in self._secrets
            if v
        ]
        self._mask = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    def redact(self, text: str) -> str:
        return self._mask.sub(_MASK, text) if self._mask is not None else text

    def guarded(self, name: str, step: Callable[[], StoreReport]) -> StoreReport:
        try:
            return step()
        except Exception as exc:
            return StoreReport(name, 0, error=self.redact(f"{type(exc).__name__}: {exc}"))

    def scrubbed(self, report: StoreReport, name: str | Path) -> StoreReport:
        """``report`` after cleaning the SQLite file ``name`` of the data directory (or at
        the path ``name``)."""
        # After a time-range deletion the person is still there: only the WAL is truncated.
        found = self.needles if self.whole else needles((), ())
        try:
            note = scrub(self.settings.data_dir / name, found)
        except Exception as exc:
            report.error = self.redact(str(exc))
            return report
        if note:
            report.detail = f"{report.detail}; {note}" if report.detail else note
        return report

    # -- the stores --------------------------------------------------------------------------

    def log_records(self) -> StoreReport:
        counts: dict[str, int] = {}
        kept: list[Record] = []
        if self.log.encrypts_per_person:
            # Sealed under per-person data keys: shred instead of delete. The capability
            # belongs to the shredding wrapper, whose key operations _erase_kafka uses.
            return self._shred_log(cast("ShreddingLog", self.log), kept)
        for topic in sorted(self.log.topics()):
            if topic == RAW_TOPIC:
                match = self._raw_match(self.log.committed("validate", RAW_TOPIC), kept)
            else:
                match = self.matcher.record
            counts[topic] = self.log.delete_where(topic, match)
        detail = ", ".join(f"{t} {n}" for t, n in counts.items())
        error = None
        if kept:
            error = (
                f"{len(kept)} raw record(s) not yet validated also hold other people's events, so "
                "they were kept; run the request again once the validate stage has caught up"
            )
        return StoreReport("log", sum(counts.values()), detail, error)

    def _shred_log(self, log: ShreddingLog, kept: list[Record]) -> StoreReport:
        """The Kafka log sealed with data keys: shred instead of delete (``_erase_kafka``)."""
        from clew.privacy._erase_kafka import erase_log

        def match_for(topic: str) -> Callable[[Record], bool]:
            if topic == RAW_TOPIC:
                return self._raw_match(log.committed("validate", RAW_TOPIC), kept)
            return self.matcher.record

        people: set[bytes] = set()
        if self.whole:
            people = {v.encode() for _, v in self.subject.identifiers}
            people.update(p.encode() for p in self.subject.profile_ids)
        return erase_log(log, match_for, people, kept)

    def _raw_match(self, validated: dict[int, int], kept: list[Record]) -> Callable[[Record], bool]:
        """Whether to delete a ``raw`` record (module docstring); the mixed records kept
        because validation has not passed them go to ``kept``."""

        def match(rec: Record) -> bool:
            mine, total = self.matcher.raw(rec)
            if not mine:
                return False
            if mine == total or rec.offset < validated.get(rec.partition, 0):
                return True
            kept.append(rec)
            return False

        return match

    def serving_store(self) -> StoreReport:
        s, subject = self.store, self.subject
        if not self.whole:
            live = next((p for p in map(s.resolve, subject.profile_ids) if p), None)
            removed = 0 if live is None else s.delete_history(live, self.since_ms, self.until_ms)
            report = StoreReport("serving store", removed, f"{removed} event(s) of the history")
            return self._scrub_serving(report)
        profiles = sum(s.delete_profile(pid) for pid in subject.profile_ids)
        # An identifier claimed again since the subject was resolved (an event in flight).
        for id_type, value in subject.identifiers:
            owner = s.lookup(id_type, value)
            if owner is not None:
                profiles += s.delete_profile(owner)
        separations = s.delete_separations(subject.identifiers)
        report = StoreReport(
            "serving store",
            profiles,
            f"{profiles} profile(s) with identity graph, provenance, history and timers; "
            f"{separations} separation(s)",
        )
        return self._scrub_serving(report)

    def _scrub_serving(self, report: StoreReport) -> StoreReport:
        path = self.store.local_file
        if path is None:
            return report
        return self.scrubbed(report, path)

    def lake(self) -> StoreReport:
        from clew.lake.tiers import lifecycle_lock

        # A tier move copies rows to cold before deleting them from warm: a deletion in
        # between would miss the copy, so the two never interleave.
        with lifecycle_lock(self.settings.data_dir, wait=True):
            return self._lake()

    def _lake(self) -> StoreReport:
        settings, m = self.settings, self.matcher
        roots = [settings.lake_location, settings.cold_location]
        index = PersonIndex(settings.lake_index_path, roots)
        try:
            days = index.partitions(self.subject.identifiers)
            custom = {c.id_type: c.paths for c in self.rules.custom_ids}
            needed = {t for t, _ in self.subject.identifiers if t in custom}
            notes = []
            eraser = LakeEraser(roots, m)
            # Event partitions are event dates: a time range narrows them (dead letters are
            # filed by when they were received, so theirs are all read).
            low = _day(self.since_ms, -(1 << 31))
            high = _day(None if self.until_ms is None else self.until_ms - 1, 1 << 31)
            days[EVENTS] = {d for d in days[EVENTS] if d == NULL_DAY or low <= d <= high}
            for table in (EVENTS, DLQ):
                gap = self._gap(index, table, needed, custom)
                if gap is not None:
                    notes.append(f"{table}: every partition read ({gap})")
                eraser.partitioned(table, None if gap else days[table])
        finally:
            index.close()
        if self.whole:
            ids = {_md5(f"{t}|{v}") for t, v in self.subject.identifiers}
            eraser.by_profile("customer_profiles", lambda h: _in("md5(profile_id)", h))
            eraser.by_profile(
                "identities",
                lambda h: (
                    f"{_in('md5(profile_id)', h)} OR "
                    + _in("md5(concat_ws('|', id_type, value))", ids or {""})
                ),
            )
            eraser.by_profile("audience_changes", lambda h: _in("md5(profile_id)", h))
        out = eraser.outcome
        parts = [f"{t} {n}" for t, n in sorted(out.removed.items())]
        parts.append(f"{out.partitions} partition(s) rewritten, {out.rows_read} row(s) read")
        parts.append(f"{out.vacuumed} old file(s) vacuumed")
        detail = "; ".join(parts + notes)
        return StoreReport("lake", sum(out.removed.values()), detail)

    def _gap(
        self, index: PersonIndex, table: str, needed: set[str], custom: dict[str, list[str]]
    ) -> str | None:
        from clew.lake.tables import sink_app_id

        path = self.settings.lake_location.table(table)
        versions: dict[int, int] = {}
        if is_table(path):
            dt = path.open()
            spec = self.log.topics().get(table)
            for p in range(spec.partitions if spec else self.settings.log.partitions):
                v = dt.transaction_version(sink_app_id(table, p))
                if v is not None:
                    versions[p] = v
        return index.gaps(table, versions, needed, custom)

    def lake_index(self) -> StoreReport:
        index = PersonIndex(self.settings.lake_index_path)
        try:
            removed = index.forget(self.subject.identifiers)
        finally:
            index.close()
        report = StoreReport("lake index", removed, f"{removed} entries")
        return self.scrubbed(report, self.settings.lake_index_path.name)

    def outbox(self) -> StoreReport:
        from clew.destinations.outbox import Outbox

        path = self.settings.outbox_path
        if not path.exists():
            return StoreReport("destinations outbox", 0, "no outbox")
        outbox = Outbox(path)
        try:
            # A time range leaves the person, so texts naming them stay.
            mentions = self._mentions if self.whole else (lambda _: False)
            where = outbox.forget(self.matcher.payload, mentions)
        finally:
            outbox.close()
        return self.scrubbed(StoreReport("destinations outbox", len(where)), path.name)

    def _mentions(self, text: str) -> bool:
        lowered = text.lower()
        return any(s.lower() in lowered for s in self._secrets if len(s) >= 5)

    def imports(self) -> StoreReport:
        from clew.imports.ledger import ImportLedger

        path = self.settings.imports_path
        if not path.exists():
            return StoreReport("imports", 0, "no imports")
        ledger = ImportLedger(path)
        try:
            where = ledger.forget(self.subject.identifiers, self.subject.profile_ids)
        finally:
            ledger.close()
        return self.scrubbed(StoreReport("imports", len(where)), path.name)

    def notices(self) -> StoreReport:
        from clew.destinations.notices import send_deletion_notice

        with Destinations.open(self.settings) as destinations:
            configs, _ = destinations.load()
        wanted = [c for c in configs.values() if c.deletion_notices]
        outcomes = [
            send_deletion_notice(
                c,
                self.subject.identifiers,
                self.subject.profile_ids,
                block_private_networks=self.settings.destinations.block_private_networks,
            )
            for c in wanted
        ]
        sent = [o for o in outcomes if o.delivered]
        failed = [o for o in outcomes if not o.delivered]
        detail = f"{len(sent)} delivered, {len(failed)} failed, of {len(wanted)} opted in"
        error = None
        if failed:
            error = "; ".join(f"{o.dest}: {o.error}" for o in failed)
        return StoreReport("deletion notices", len(sent), detail, error and self.redact(error))

    def run(self) -> ErasureReport:
        steps: list[tuple[str, Callable[[], StoreReport]]] = [
            ("log", self.log_records),
            ("serving store", self.serving_store),
            ("lake", self.lake),
        ]
        if self.whole:
            steps.append(("lake index", self.lake_index))
        steps.append(("destinations outbox", self.outbox))
        if self.whole:
            steps += [("imports", self.imports), ("deletion notices", self.notices)]
        return ErasureReport([self.guarded(name, step) for name, step in steps])


def _day(ms: int | None, default: int) -> int:
    """The :func:`~clew.lake.person_index.day_number` of an epoch-millisecond time."""
    return default if ms is None else ms // 86_400_000


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _in(expr: str, values: set[str]) -> str:
    return f"{expr} IN ({', '.join(repr(v) for v in sorted(values))})"


def erase(
    settings: Settings,
    subject: Subject,
    *,
    store: ProfileStore,
    log: Log,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> ErasureReport:
    """Erase ``subject`` (module docstring); with ``since_ms``/``until_ms`` only their events
    in ``[since_ms, until_ms)`` of event time. Never raises for a store that fails: its
    :class:`StoreReport` carries the error, and running the erasure again is safe."""
    return _Eraser(settings, subject, store, log, since_ms, until_ms).run()
