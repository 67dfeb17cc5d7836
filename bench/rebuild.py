"""Batch rebuild of profiles from the lake (`clew rebuild`; target: 1M events with ~200k
identifiers in < 30 s).

Setup (not timed): a web shop's traffic is written straight into a lake ``events`` Delta table
(the lake stage's schema and row conversion), in event-time order: people browse anonymously
on one to three devices, sign up or log in (identify with email, name, sometimes a phone),
order (``revenue`` as a number or a string, sometimes only ``total``), alias a device, log
out (the device gets a new anonymous id); some share a computer with someone who logs in on
it without logging the other out; a few type placeholder emails.

Each measurement runs in a fresh process, so its peak RSS is its own:

- ``rebuild``: :func:`clew.batch.rebuild.rebuild` writing both tables, with its phases;
- baseline ``scan``: DuckDB reading the same events and grouping them per user or device id
  with first/last seen and summed revenue (the cost of reading and aggregating the lake);
- baseline ``union-find``: DuckDB reading each event's ids and emails, plus plain connected
  components over them in Python (identity stitching without any rule).

With ``--audiences DIR`` (e.g. ``examples/audiences``), the cost of computed traits and
audience memberships: the rebuild runs twice more against an (empty) serving store, so that
it derives and compares them, first with no definition, then with the definitions of DIR
pushed; the difference is their cost.

    .venv/bin/python bench/rebuild.py [--events 1000000] [--people 60000] [--data-dir DIR]
        [--audiences DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from clew.config import Settings
from clew.events import format_time

TARGET_S = 30.0
_CHUNK = 100_000
_PLACEHOLDERS = ("test@test.com", "none@none.com", "noreply@example.com")
_AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15"


@dataclass
class _Device:
    anon: str
    user: int | None = None


@dataclass
class _Person:
    index: int
    registered: bool
    devices: list[_Device] = field(default_factory=list)
    phone: str | None = None


class Shop:
    """The simulated traffic: a pure function of the seed."""

    def __init__(self, people: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self._anon = 0
        self.people: list[_Person] = []
        for p in range(people):
            person = _Person(p, self.rng.random() < 0.55)
            person.devices = [_Device(self.new_anon()) for _ in range(self.rng.randint(1, 3))]
            if self.rng.random() < 0.1:
                person.phone = f"+4420794{p:05d}"
            self.people.append(person)
        # 3% of people share their first device with the next person (a family computer).
        for p in range(0, people - 1, 2):
            if self.rng.random() < 0.06:
                self.people[p + 1].devices[0] = self.people[p].devices[0]

    def new_anon(self) -> str:
        self._anon += 1
        return f"anon-{self._anon:08d}"

    def events(self, n: int, start: datetime) -> Iterator[dict[str, Any]]:
        rng = self.rng
        for i in range(n):
            person = self.people[int(rng.paretovariate(1.2) * 7919) % len(self.people)]
            device = rng.choice(person.devices)
            at = start + timedelta(milliseconds=50 * i)
            yield self._event(i, at, person, device)

    def _event(self, i: int, at: datetime, person: _Person, d: _Device) -> dict[str, Any]:
        rng, p = self.rng, person.index
        r = rng.random()
        user = f"u-{d.user:06d}" if d.user is not None else None
        if d.user is not None and d.user != p:
            # Someone else is logged in on this shared computer: this person logs in on top.
            d.user, user = p, f"u-{p:06d}"
            person.registered = True
            return self._identify(i, at, user, d.anon, person, rng.random() < 0.05)
        if d.user is None:
            if r < 0.10 and person.registered:
                d.user = p
                return self._identify(i, at, f"u-{p:06d}", d.anon, person, rng.random() < 0.05)
            if r < 0.12:
                person.registered, d.user = True, p
                return self._identify(i, at, f"u-{p:06d}", d.anon, person, rng.random() < 0.1)
            if r < 0.135:
                return self._order(i, at, None, d.anon)
            return self._browse(i, at, None, d.anon)
        if r < 0.02:
            d.anon, d.user = self.new_anon(), None  # logout: the device gets a new id
            return self._browse(i, at, None, d.anon)
        if r < 0.09:
            return self._order(i, at, user, d.anon)
        if r < 0.095:
            return self._doc(i, at, "alias", userId=user, previousId=d.anon)
        if r < 0.11:
            return self._doc(
                i,
                at,
                "identify",
                userId=user,
                anonymousId=d.anon,
                traits={"plan": rng.choice("abc")},
            )
        return self._browse(i, at, user, d.anon)

    def _identify(
        self, i: int, at: datetime, user: str, anon: str, person: _Person, placeholder: bool
    ) -> dict[str, Any]:
        p = person.index
        email = self.rng.choice(_PLACEHOLDERS) if placeholder else f"person{p}@mail{p % 97}.test"
        traits: dict[str, Any] = {"email": email, "name": f"Person {p}", "plan": "free"}
        if person.phone is not None:
            traits["phone"] = person.phone
        return self._doc(i, at, "identify", userId=user, anonymousId=anon, traits=traits)

    def _order(self, i: int, at: datetime, user: str | None, anon: str) -> dict[str, Any]:
        amount = round(self.rng.uniform(5, 300), 2)
        kind = self.rng.random()
        props: dict[str, Any] = (
            {"revenue": amount}
            if kind < 0.8
            else {"revenue": f"{amount:.2f}"}
            if kind < 0.9
            else {"total": amount}
        )
        props["order_id"] = f"o-{i}"
        ids = {"userId": user} if user else {}
        return self._doc(
            i, at, "track", **ids, anonymousId=anon, event="Order Completed", properties=props
        )

    def _browse(self, i: int, at: datetime, user: str | None, anon: str) -> dict[str, Any]:
        ids = {"userId": user} if user else {}
        if self.rng.random() < 0.6:
            page = self.rng.choice(("Home", "Product", "Cart", "Search"))
            return self._doc(i, at, "page", **ids, anonymousId=anon, name=page)
        sku = f"sku-{self.rng.randrange(500)}"
        props = {"product_id": sku, "price": 19.99}
        return self._doc(
            i, at, "track", **ids, anonymousId=anon, event="Product Viewed", properties=props
        )

    def _doc(self, i: int, at: datetime, type_: str, **fields: Any) -> dict[str, Any]:
        ts = format_time(at)
        context = {
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "page": {"path": "/", "url": "https://shop.test/"},
            "userAgent": _AGENT,
            "ip": "203.0.113.7",
        }
        received = format_time(at + timedelta(milliseconds=120))
        return {
            "type": type_,
            "messageId": f"m-{i:08d}",
            "timestamp": ts,
            "originalTimestamp": ts,
            "receivedAt": received,
            "sourceId": "bench",
            "context": context,
            **fields,
        }


def write_lake(settings: Settings, events: int, people: int, seed: int) -> None:
    from deltalake import write_deltalake

    from clew.lake.tables import EVENTS, to_arrow

    shop = Shop(people, seed)
    chunk: list[bytes] = []
    path = str(settings.lake_path / EVENTS.name)

    def flush() -> None:
        table = to_arrow(EVENTS, chunk)
        write_deltalake(path, table, mode="append", partition_by=[EVENTS.partition_by])
        chunk.clear()

    for doc in shop.events(events, datetime(2026, 1, 5, tzinfo=UTC)):
        chunk.append(orjson.dumps(doc))
        if len(chunk) >= _CHUNK:
            flush()
    if chunk:
        flush()


def measure(what: str, data_dir: Path) -> dict[str, Any]:
    """Run in a fresh process: time ``what`` and report its peak RSS."""
    settings = Settings(data_dir=data_dir)
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    out: dict[str, Any] = {}
    if what == "rebuild":
        from clew.batch.rebuild import rebuild

        report = rebuild(settings)
        out = {
            "events": report.events,
            "applied": report.applied,
            "profiles": report.profiles,
            "identities": report.identities,
            "phases": report.timings,
        }
    else:
        import duckdb

        from clew.lake.query import register_tables

        conn = duckdb.connect()
        register_tables(conn, settings.lake_path)
        if what == "scan":
            rows = conn.execute(
                "SELECT coalesce(user_id, anonymous_id) AS k, min(timestamp), max(timestamp), "
                "count(*), sum(TRY_CAST(json_extract(properties, '$.revenue') AS DOUBLE)) "
                "FROM events GROUP BY k"
            ).fetchall()
            out = {"groups": len(rows)}
        else:
            rows = conn.execute(
                "SELECT user_id, anonymous_id, traits->>'email' FROM events "
                "ORDER BY timestamp, received_at, message_id"
            ).fetchall()
            out = {"components": _components(rows)}
    out["seconds"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = usage.ru_utime + usage.ru_stime - cpu_before
    out["peak_rss_mb"] = _peak_rss_mb(usage)
    return out


def _peak_rss_mb(usage: resource.struct_rusage) -> float:
    # ru_maxrss survives exec on Linux, so a child would report its parent's peak (the
    # parent generated the data); the kernel's per-image high-water mark does not.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return usage.ru_maxrss / 1024


def _components(rows: list[tuple[str | None, ...]]) -> int:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for row in rows:
        ids = [f"{n}:{v}" for n, v in enumerate(row) if v]
        for ident in ids:
            parent.setdefault(ident, ident)
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            if a != b:
                parent[b] = a
    return sum(1 for k, v in parent.items() if k == v)


def _run(what: str, data_dir: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", what, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _audiences(
    settings: Settings, definitions: Path, data_dir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rebuild against an empty serving store without, then with, ``definitions``."""
    from clew.audiences.repository import DefinitionRepository, load_file
    from clew.backends import open_store

    open_store(settings).close()
    plain = _run("rebuild", data_dir)
    found = [d for path in sorted(definitions.glob("*.y*ml")) for d in load_file(path)]
    DefinitionRepository(settings.data_dir).push(found)
    return plain, _run("rebuild", data_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--audiences", type=Path, default=None, help="definitions to push")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.data_dir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        settings = Settings(data_dir=data_dir)
        if not (settings.lake_path / "events").exists():
            started = time.perf_counter()
            write_lake(settings, args.events, args.people, args.seed)
            print(f"setup: wrote {args.events:,} events in {time.perf_counter() - started:.1f} s")
        scan = _run("scan", data_dir)
        components = _run("union-find", data_dir)
        result = _run("rebuild", data_dir)
        if args.audiences is not None:
            plain, with_audiences = _audiences(settings, args.audiences, data_dir)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["phases"].items())
    print(
        f"events: {result['events']:,}; identifiers: {result['identities']:,}; "
        f"profiles: {result['profiles']:,} (union-find without rules: "
        f"{components['components']:,} components)"
    )
    print(
        f"events the unifier applied: {result['applied']:,} "
        f"({100 * result['applied'] / max(1, result['events']):.0f}%)"
    )
    for name, r in (
        ("baseline scan + group-by (DuckDB)", scan),
        ("baseline union-find (DuckDB + Python)", components),
        ("rebuild", result),
    ):
        print(
            f"{name + ':':39s}{r['seconds']:6.1f} s wall, {r['cpu_seconds']:5.1f} s CPU, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    print(f"rebuild phases: {phases}")
    print(
        f"ratio rebuild / scan: {result['seconds'] / scan['seconds']:.1f}; "
        f"rebuild / union-find: {result['seconds'] / components['seconds']:.1f} (wall time)"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.audiences is not None:
        for name, r in (("without definitions", plain), ("with definitions", with_audiences)):
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in r["phases"].items())
            print(
                f"rebuild with a serving store, {name}: {r['seconds']:.1f} s wall, "
                f"{r['cpu_seconds']:.1f} s CPU, peak RSS {r['peak_rss_mb']:.0f} MB ({phases})"
            )
        extra = with_audiences["seconds"] - plain["seconds"]
        print(
            f"computed traits and audiences cost: +{extra:.1f} s wall "
            f"(+{100 * extra / plain['seconds']:.0f}%), "
            f"+{with_audiences['peak_rss_mb'] - plain['peak_rss_mb']:.0f} MB peak RSS"
        )
    if result["events"] >= 1_000_000:
        met = "met" if result["seconds"] < TARGET_S else "NOT met"
        print(f"target < {TARGET_S:.0f} s for 1M events: {met}")


if __name__ == "__main__":
    main()
