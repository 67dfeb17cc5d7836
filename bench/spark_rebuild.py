"""Batch rebuild on Spark against DuckDB (`clew rebuild --engine spark|duckdb`) on the same
generated lake: events per second of each engine, and their ratio.

Setup (not timed): the web shop of bench/rebuild.py writes its traffic into a lake ``events``
Delta table. Then, in this process:

- ``duckdb``: :func:`clew.batch.rebuild.rebuild`, writing both tables;
- ``spark``: :func:`clew.batch.spark_rebuild.rebuild_spark` on ``local[*]`` (every core of
  this machine), writing both tables, twice on one session: the first run pays for the JVM's
  warm-up (class loading, code generation), the second is what a long-lived session gets.
  Starting the session is timed apart.

Both engines must produce the same number of profiles and identifiers, or the script fails.
Spark on one machine is not expected to win: it pays for serialising every event to Python
workers and for many small jobs; what it buys is the same result on a cluster, over a lake no
single machine could hold.

    .venv/bin/python bench/spark_rebuild.py [--events 200000] [--people 12000] [--master local[*]]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from clew.batch._spark_session import build_session
from clew.batch.rebuild import RebuildReport, rebuild
from clew.batch.spark_rebuild import rebuild_spark
from clew.config import Settings
from rebuild import write_lake


def _line(name: str, report: RebuildReport, seconds: float) -> str:
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items())
    rate = report.events / seconds if seconds else 0.0
    return f"{name:16s}{seconds:7.1f} s  {rate:10,.0f} events/s  ({phases})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--people", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=args.data_dir or Path(tmp))
        if not (settings.lake_path / "events").exists():
            started = time.perf_counter()
            write_lake(settings, args.events, args.people, args.seed)
            print(f"setup: wrote {args.events:,} events in {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        duck = rebuild(settings)
        duck_s = time.perf_counter() - started

        started = time.perf_counter()
        session = build_session(args.master, {})
        start_s = time.perf_counter() - started
        runs: list[tuple[RebuildReport, float]] = []
        try:
            for _ in range(2):
                started = time.perf_counter()
                report = rebuild_spark(settings, session=session)
                runs.append((report, time.perf_counter() - started))
        finally:
            session.stop()

    for report, _ in runs:
        got = (report.profiles, report.identities)
        if got != (duck.profiles, duck.identities):
            raise SystemExit(
                f"engines differ: duckdb {(duck.profiles, duck.identities)}, spark {got}"
            )
    print(
        f"events: {duck.events:,}; profiles: {duck.profiles:,}; identifiers: "
        f"{duck.identities:,} (equal in both engines)"
    )
    print(f"{'spark session':16s}{start_s:7.1f} s  (master {args.master})")
    print(_line("duckdb", duck, duck_s))
    print(_line("spark, 1st run", *runs[0]))
    print(_line("spark, 2nd run", *runs[1]))
    best = min(s for _, s in runs)
    print(f"spark / duckdb events/s: {duck_s / best:.2f} (best Spark run; > 1: Spark faster)")


if __name__ == "__main__":
    main()
