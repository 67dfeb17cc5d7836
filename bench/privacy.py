"""Whole-person erasure on a large lake (target: < 5 s on 10M events), with the person index
against the same erasure without it.

Setup (not timed): a lake ``events`` Delta table of ``--events`` events over ``--days`` days,
written directly with Arrow (columns built with Arrow compute, the lake's schema, snappy like
the sink), in appends of ``_CHUNK`` rows so that a day's rows sit in one or two large files as
compaction leaves them. People come in cohorts active for ten days (about ``--per-user``
events each, on about ten days), with a user id, a device id and an email in the traits of
their first event of a day. One of them, the subject, has events on six days spread over the
year, inside those large files. The person index is built for the table (as the lake sink
would have), and the data directory gets a serving-store profile and a log holding the
subject's and other people's records, so that erasure runs against every store.

Measured on two copies of that data directory:

- ``indexed``: :func:`clew.privacy.erase.erase`; the lake step reads and rewrites only the
  subject's partitions, then vacuums with zero retention and trims the Delta log;
- ``baseline``: the same call without the index (its file removed: the index then cannot vouch
  for the table, and the lake step reads every partition to find the subject's rows).

    .venv/bin/python bench/privacy.py [--events 10000000] [--days 365] [--quick] [--verify]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from clew.backends import open_log
from clew.config import Settings
from clew.lake.person_index import TABLE_IDS, PersonIndex, day_number, index_path
from clew.lake.tables import EVENTS
from clew.log.base import Message
from clew.privacy.erase import ErasureReport, Subject, erase, resolve_subject
from clew.store import Provenance, SQLiteProfileStore

TARGET_S = 5.0
_START = datetime(2025, 1, 1, tzinfo=UTC)
_CHUNK = 500_000
_SUBJECT_DAYS = (17, 80, 143, 206, 269, 332)
SUBJECT_USER = "user-subject-4242"
SUBJECT_ANON = "anon-subject-device-9f8e"
SUBJECT_EMAIL = "subject.person@bench.test"


def _text(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _mod(idx: pa.Array, n: int) -> pa.Array:
    return pc.subtract(idx, pc.multiply(pc.divide(idx, n), n))


def events_table(idx: pa.Array, per_day: int, cohort: int) -> pa.Table:
    """Events number ``idx``; event ``i`` is on day ``i // per_day``, by a user of the cohort
    of its ten days."""
    n = len(idx)
    join = pc.binary_join_element_wise
    day = pc.divide(idx, per_day)
    ts = pc.cast(
        pc.add(pc.multiply(idx, 86_400_000_000 // per_day), int(_START.timestamp() * 1_000_000)),
        pa.timestamp("us", tz="UTC"),
    )
    user_no = pc.add(pc.multiply(pc.divide(day, 10), cohort), _mod(idx, cohort))
    user = join("u-", _text(user_no), "")
    ctx = join(
        '{"ip":"203.0.113.',
        _text(_mod(idx, 251)),
        '","library":{"name":"analytics.js","version":"5.2.0"},"page":{"path":"/p/',
        _text(_mod(idx, 997)),
        '"}}',
        "",
    )
    first_of_day = pc.less(_mod(idx, per_day), cohort)
    traits = pc.if_else(
        first_of_day, join('{"email":"', user, '@people.test"}', ""), pa.scalar("{}")
    )
    props = join('{"product_id":"sku-', _text(_mod(idx, 499)), '","currency":"EUR"}', "")
    strings = pa.nulls(n, pa.string())
    cols = {
        "message_id": join("m-", _text(idx), ""),
        "type": pa.repeat("track", n).cast(pa.string()),
        "event": pa.repeat("Product Viewed", n).cast(pa.string()),
        "name": strings,
        "category": strings,
        "user_id": user,
        "anonymous_id": join("a-", _text(user_no), ""),
        "group_id": strings,
        "previous_id": strings,
        "timestamp": ts,
        "original_timestamp": ts,
        "sent_at": ts,
        "received_at": ts,
        "source_id": pa.repeat("web", n).cast(pa.string()),
        "context": ctx,
        "properties": props,
        "traits": traits,
        "integrations": pa.repeat("{}", n).cast(pa.string()),
        "event_date": pc.cast(ts, pa.date32()),
    }
    table = pa.table(cols, schema=EVENTS.schema)
    # The subject's events: two on each of their days, among everyone else's in these files.
    subject = pc.is_in(idx, pa.array(_subject_rows(per_day), pa.int64()))
    for column, value in (
        ("user_id", SUBJECT_USER),
        ("anonymous_id", SUBJECT_ANON),
        ("traits", f'{{"email":"{SUBJECT_EMAIL}"}}'),
    ):
        i = table.schema.get_field_index(column)
        table = table.set_column(i, column, pc.if_else(subject, value, table[column]))
    return table


def _subject_rows(per_day: int) -> list[int]:
    return [d * per_day + k for d in _SUBJECT_DAYS for k in (per_day // 3, 2 * per_day // 3)]


def build(data_dir: Path, events: int, days: int, per_user: int) -> Subject:
    settings = Settings(data_dir=data_dir)
    per_day = events // days
    cohort = max(1, per_day * 10 // per_user)
    path = str(settings.lake_path / EVENTS.name)
    index = PersonIndex(index_path(data_dir), [settings.lake_path], writer=True)
    for start in range(0, per_day * days, _CHUNK):
        idx = pa.array(range(start, min(start + _CHUNK, per_day * days)), pa.int64())
        table = events_table(idx, per_day, cohort)
        keyed: set[tuple[str, str, int]] = set()
        pairs = (
            pa.table(
                {
                    "u": table["user_id"],
                    "a": table["anonymous_id"],
                    "d": pc.cast(table["event_date"], pa.int32()),
                }
            )
            .group_by(["u", "a", "d"])
            .aggregate([])
        )
        for u, a, d in zip(*(pairs[c].to_pylist() for c in ("u", "a", "d")), strict=True):
            keyed.update({("user_id", u, d), ("anonymous_id", a, d)})
            keyed.add(("email", f"{u}@people.test", d))
        index.add(TABLE_IDS["events"], keyed)
        write_deltalake(path, table, mode="append", partition_by=[EVENTS.partition_by])
    for d in _SUBJECT_DAYS:
        day = day_number((_START + timedelta(days=d)).date())
        index.add(TABLE_IDS["events"], [("email", SUBJECT_EMAIL, day)])
    index.close()

    store = SQLiteProfileStore(settings.profiles_path)
    log = open_log(settings)
    try:
        for pid, user, anon, email in (
            ("p-subject", SUBJECT_USER, SUBJECT_ANON, SUBJECT_EMAIL),
            ("p-other", "u-1", "a-1", "u-1@people.test"),
        ):
            for id_type, value in (("user_id", user), ("anonymous_id", anon), ("email", email)):
                store.attach(pid, id_type, value, Provenance("m", "web", 1))
            doc = {"type": "track", "event": "X", "userId": user, "messageId": f"{pid}-m"}
            doc |= {"timestamp": "2025-03-01T00:00:00Z", "receivedAt": "2025-03-01T00:00:00Z"}
            log.append_sync("events", [Message(orjson.dumps(doc | {"sourceId": "web"}))])
        return resolve_subject(store, "email", SUBJECT_EMAIL)
    finally:
        store.close()
        log.close()


def run(data_dir: Path, subject: Subject) -> tuple[float, ErasureReport]:
    settings = Settings(data_dir=data_dir)
    store = SQLiteProfileStore(settings.profiles_path)
    log = open_log(settings)
    try:
        started = time.perf_counter()
        report = erase(settings, subject, store=store, log=log)
        return time.perf_counter() - started, report
    finally:
        store.close()
        log.close()


def _du(path: Path) -> int:
    if path.is_file():
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _show(name: str, seconds: float, report: ErasureReport) -> None:
    print(f"{name}: {seconds:.2f} s, {'ok' if report.ok else 'PARTIAL'}")
    for s in report.stores:
        error = f"  ERROR {s.error}" if s.error else ""
        print(f"  {s.store}: {s.removed} removed ({s.detail}){error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-user", type=int, default=50, help="events per person")
    parser.add_argument("--quick", action="store_true", help="200k events")
    parser.add_argument("--verify", action="store_true", help="also run verify (a full scan)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary dir")
    args = parser.parse_args()
    if args.quick:
        args.events = 200_000
    own = args.data_dir is None
    work = Path(tempfile.mkdtemp(prefix="clew-privacy-")) if own else args.data_dir
    try:
        indexed, baseline = work / "indexed", work / "baseline"
        started = time.perf_counter()
        subject = build(indexed, args.events, args.days, args.per_user)
        entries = PersonIndex(index_path(indexed))
        print(
            f"setup: {args.events:,} events over {args.days} days "
            f"({_du(indexed / 'lake') / 1e6:.0f} MB lake, {_du(index_path(indexed)) / 1e6:.0f} MB "
            f"index) in {time.perf_counter() - started:.1f} s; the subject has "
            f"{2 * len(_SUBJECT_DAYS)} events on {len(_SUBJECT_DAYS)} days"
        )
        entries.close()
        shutil.copytree(indexed, baseline)
        index_path(baseline).unlink()

        fast, fast_report = run(indexed, subject)
        _show("indexed", fast, fast_report)
        slow, slow_report = run(baseline, subject)
        _show("baseline (no index: every partition read)", slow, slow_report)
        verdict = "PASS" if fast < TARGET_S and fast_report.ok else "BELOW TARGET"
        print(
            f"whole-person erasure: {fast:.2f} s with the index vs {slow:.2f} s without "
            f"({slow / fast:.1f}x); target < {TARGET_S:.0f} s: {verdict}"
        )
        if args.verify:
            from clew.privacy.verify import verify

            settings = Settings(data_dir=indexed)
            store = SQLiteProfileStore(settings.profiles_path)
            log = open_log(settings)
            try:
                started = time.perf_counter()
                result = verify(settings, subject, store=store, log=log)
            finally:
                store.close()
                log.close()
            print(
                f"verify: {'clean' if result.clean else result.traces[:5]} in "
                f"{time.perf_counter() - started:.1f} s"
            )
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
