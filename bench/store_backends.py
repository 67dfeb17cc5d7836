"""Serving-store backends side by side: SQLite (embedded) and Redis, in the same run.

Setup (not timed): ``--people`` profiles, each with an anonymous id, an email and a user id,
a few traits and 10 history events; every 10th person's profile absorbed a second one
(a merge, so some reads follow a redirect tree). The same data go into both stores.

Timed, per backend:

- lookup + get: one thread looks a random person up by email and reads the profile, as the
  Profile API does per request; ops/s and latency percentiles;
- write back: ``--sets`` working sets of ``--set-size`` random people, each as the profiles
  stage handles a batch: in one transaction, ``load`` by their identifiers, update traits and
  add an event per profile in memory (and merge one pair in ten), ``write_back`` and
  ``save_offsets``; working sets/s, profiles/s and latency percentiles.

Redis runs as a real ``redis-server`` (tests/_services.py; ``sh scripts/redis.sh`` installs
it) on this machine, so it shares the CPU with the Python client, and every call crosses the
loopback network, while SQLite runs in the process.

    .venv/bin/python bench/store_backends.py [--people 20000] [--ops 5000] [--sets 40]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clew.identity.working_set import WorkingSet
from clew.store import (
    IdentityEdge,
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    RedisProfileStore,
    SQLiteProfileStore,
    StoredEvent,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _services import ServiceUnavailable, redis_server  # noqa: E402


@dataclass(slots=True)
class Result:
    name: str
    ops: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.ops / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def identities(person: int) -> list[tuple[str, str]]:
    return [
        ("anonymous_id", f"anon-{person}"),
        ("email", f"person{person}@example.com"),
        ("user_id", f"user-{person}"),
    ]


def populate(store: ProfileStore, people: int) -> None:
    """Each person as a profile written with put_profile; every 10th absorbed another id."""
    body = b'{"type":"track","event":"Product Viewed","properties":{"price":19.99}}'
    for p in range(people):
        prov = Provenance(f"m{p}", "bench", 1_000 + p)
        merged = (Redirect(f"old-{p}", f"p{p}", prov),) if p % 10 == 0 else ()
        profile = Profile(
            f"p{p}",
            1_000 + p,
            2_000 + p,
            tuple(IdentityEdge(t, v, prov) for t, v in identities(p)),
            {"name": f"Person {p}", "plan": "pro" if p % 3 == 0 else "free", "visits": p % 50},
            merged,
            {"orders": p % 7, "ltv": float(p % 300)},
        )
        history = [StoredEvent(0, f"e{p}-{i}", 1_000 + i, body) for i in range(10)]
        store.put_profile(profile, history)


def bench_reads(store: ProfileStore, people: int, ops: int, rng: random.Random) -> Result:
    latencies = []
    started = time.perf_counter()
    for _ in range(ops):
        t0 = time.perf_counter()
        pid = store.lookup("email", f"person{rng.randrange(people)}@example.com")
        assert pid is not None
        assert store.get(pid) is not None
        latencies.append((time.perf_counter() - t0) * 1000)
    return Result("lookup + get", ops, time.perf_counter() - started, latencies)


def bench_write_back(
    store: ProfileStore, people: int, sets: int, size: int, rng: random.Random
) -> Result:
    latencies = []
    started = time.perf_counter()
    for n in range(sets):
        chosen = rng.sample(range(people), size)
        keys = [key for p in chosen for key in identities(p)]
        t0 = time.perf_counter()
        with store.transaction():
            # A fresh working set each time: every batch loads its profiles from the store.
            work = WorkingSet(store.history)
            work.begin(store, keys)
            ws = work.store
            live = [p.profile_id for p in ws.scan(None, 1 << 62)]
            prov = Provenance(f"batch-{n}", "bench", 10_000_000 + n)
            for i in range(0, len(live) - 1, 20):
                ws.merge(live[i], live[i + 1], prov)
            for pid in live:
                survivor = ws.resolve(pid)
                if survivor is None:
                    continue
                ws.update_traits(survivor, lambda t: {**t, "visits": t.get("visits", 0) + 1})
                ws.add_event(survivor, StoredEvent(0, f"b{n}-{pid}", 5_000, b'{"type":"page"}'))
            profiles, gone, history = work.result(())
            store.write_back(profiles, gone, history)
            store.save_offsets("bench", {("events", 0): n})
        latencies.append((time.perf_counter() - t0) * 1000)
    return Result(f"write back of {size}", sets, time.perf_counter() - started, latencies)


@contextmanager
def backends(workdir: Path) -> Iterator[list[tuple[str, Callable[[], ProfileStore]]]]:
    sqlite = ("sqlite", lambda: SQLiteProfileStore(workdir / "store.db"))
    try:
        with redis_server(workdir) as server:
            yield [sqlite, ("redis", lambda: RedisProfileStore(server.url, prefix="bench"))]
    except ServiceUnavailable as exc:
        print(f"Redis skipped: {exc}")
        yield [sqlite]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--ops", type=int, default=5_000)
    parser.add_argument("--sets", type=int, default=40)
    parser.add_argument("--set-size", type=int, default=500)
    args = parser.parse_args()

    results: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory() as tmp, backends(Path(tmp)) as stores:
        for name, open_store in stores:
            store = open_store()
            t0 = time.perf_counter()
            populate(store, args.people)
            print(f"{name}: {args.people} profiles written in {time.perf_counter() - t0:.1f} s")
            rng = random.Random(7)
            results[name] = [
                bench_reads(store, args.people, args.ops, rng),
                bench_write_back(store, args.people, args.sets, args.set_size, rng),
            ]
            store.close()

    print()
    print(f"{'backend':<8} {'workload':<18} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rows in results.items():
        for r in rows:
            print(
                f"{name:<8} {r.name:<18} {r.per_s:>9.1f} {statistics.median(r.latencies_ms):>8.2f}"
                f" {r.pct(0.99):>8.2f}"
            )
    if "redis" in results:
        print()
        for sq, rd in zip(results["sqlite"], results["redis"], strict=True):
            print(f"redis / sqlite, {sq.name}: {rd.per_s / sq.per_s:.2f}x the ops/s")


if __name__ == "__main__":
    main()
