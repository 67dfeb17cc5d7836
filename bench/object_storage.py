"""The lake on local disk vs on an S3-compatible server, in the same run: lake sink write
throughput and `clew sql` query time.

Setup (not timed): ``--events`` track events (a shop's product views and orders over 30
days) appended to an embedded log, and an S3-compatible server: moto's, in a child process
on loopback (``tests/_s3.py``), with a fresh bucket.

Measured, for each lake location (a local directory, then ``s3://bucket/lake``):

- ``write``: :class:`clew.stages.lake_sink.LakeSinkStage` draining the log into the lake,
  with its default micro-batch (``lake.flush_rows``): the log read, the row conversion, the
  person index and the Delta commits, as `clew serve`'s lake stage does it;
- ``count`` and ``aggregate``: :meth:`clew.lake.query.Lake.sql` (what `clew sql` runs),
  the median of ``--repeat`` runs of a count with a filter and of a per-day, per-event
  revenue aggregate, each on a fresh connection (snapshot registration included);
- ``cli``: `clew sql` of the aggregate in a child process configured by environment (the
  median of three; process start and imports included).

The local lake is also queried through the route object storage takes (each snapshot
registered as a pyarrow dataset), to show why a local lake keeps DuckDB's own Parquet
reader.

moto keeps objects in memory in one Python process and signs nothing: a real S3 bucket
has more latency per request and far more throughput. Read the ratios as the cost of going
through an object store API, not as S3's speed.

    .venv/bin/python bench/object_storage.py [--events 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _s3 import S3, s3_server  # noqa: E402
from clew._locations import LakeLocation  # noqa: E402
from clew.config import LakeSettings, Settings  # noqa: E402
from clew.lake.query import Lake, _queryable, _register_datasets  # noqa: E402
from clew.log.base import Message, TopicSpec  # noqa: E402
from clew.log.embedded import EmbeddedLog  # noqa: E402
from clew.stages.lake_sink import LakeSinkStage  # noqa: E402

COUNT = "SELECT count(*) FROM events WHERE event = 'Order Completed'"
AGGREGATE = (
    "SELECT event_date, event, count(*) AS n, "
    "sum(CAST(json_extract(properties, '$.revenue') AS DOUBLE)) AS revenue "
    "FROM events GROUP BY ALL ORDER BY ALL"
)


def _events(n: int) -> list[Message]:
    out = []
    for i in range(n):
        order = i % 10 == 0
        day = 1 + i % 30
        doc: dict[str, Any] = {
            "type": "track",
            "event": "Order Completed" if order else "Product Viewed",
            "messageId": f"m-{i}",
            "userId": f"user-{i % 5000}",
            "anonymousId": f"anon-{i % 9000}",
            "timestamp": f"2026-10-{day:02d}T{i % 24:02d}:00:00.000Z",
            "receivedAt": f"2026-10-{day:02d}T{i % 24:02d}:00:01.000Z",
            "sourceId": "web",
            "context": {"ip": f"10.0.{i % 250}.{i % 200}", "page": {"path": f"/p/{i % 700}"}},
            "properties": {"sku": f"sku-{i % 700}", "revenue": round(5 + i % 95 * 1.5, 2)}
            if order
            else {"sku": f"sku-{i % 700}"},
        }
        out.append(Message(orjson.dumps(doc), key=doc["userId"].encode()))
    return out


def _write(location: LakeLocation, log: EmbeddedLog, data_dir: Path) -> tuple[float, int]:
    stage = LakeSinkStage(location, LakeSettings(), index_dir=data_dir)
    group = f"lake-{time.monotonic_ns()}"
    consumer = log.consumer(group, ["events", "dlq"])
    started = time.perf_counter()
    stage.on_assign(consumer, consumer.assignment())
    while records := consumer.poll(5000, 0.05):
        stage.handle(records, consumer)
    stage.close(consumer)
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds, stage.rows_written["events"]


def _rows(lake: Lake, sql: str) -> object:
    return lake.sql(sql).rows


def _median(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _dataset_route(location: LakeLocation, query: str) -> list[Any]:
    """The local lake queried the way an object-store lake is (for comparison)."""
    import duckdb

    conn = duckdb.connect(":memory:")
    try:
        for name, schema, _ in _queryable():
            _register_datasets(conn, name, schema, [location])
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _cli(data_dir: Path, env: dict[str, str]) -> float:
    exe = Path(sys.executable).parent / "clew"
    started = time.perf_counter()
    subprocess.run(
        [str(exe), "sql", AGGREGATE, "--format", "json", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clew-bench-s3-") as tmp:
        work = Path(tmp)
        log = EmbeddedLog(work / "log.db")
        for topic in ("events", "dlq"):
            log.create_topic(TopicSpec(topic, 4))
        for start in range(0, args.events, 50_000):
            log.append_sync("events", _events(min(50_000, args.events - start))[:])
        with s3_server(work) as s3:
            results = _run(args, work, log, s3)
        log.close()
    print(json.dumps(results, indent=2))


def _run(args: argparse.Namespace, work: Path, log: EmbeddedLog, s3: S3) -> dict[str, Any]:
    bucket = s3.bucket("bench")
    local_dir, s3_dir = work / "local", work / "s3"
    locations = {
        "local": (Settings(data_dir=local_dir), {}),
        "s3": (
            Settings(
                data_dir=s3_dir,
                lake=LakeSettings(uri=f"s3://{bucket}/lake", storage_options=s3.storage_options),
            ),
            {
                "CLEW_LAKE__URI": f"s3://{bucket}/lake",
                "CLEW_LAKE__STORAGE_OPTIONS": json.dumps(s3.storage_options),
            },
        ),
    }
    out: dict[str, Any] = {"events": args.events, "repeat": args.repeat}
    answers = {}
    for name, (settings, env) in locations.items():
        settings.data_dir.mkdir(parents=True)
        location = settings.lake_location
        seconds, rows = _write(location, log, settings.data_dir)
        lake = Lake(location)
        count_s, count = _median(functools.partial(_rows, lake, COUNT), args.repeat)
        agg_s, agg = _median(functools.partial(_rows, lake, AGGREGATE), args.repeat)
        answers[name] = (count, agg)
        out[name] = {
            "write_s": round(seconds, 3),
            "write_events_per_s": round(rows / seconds),
            "count_ms": round(count_s * 1000, 1),
            "aggregate_ms": round(agg_s * 1000, 1),
            "cli_aggregate_ms": round(
                statistics.median(_cli(settings.data_dir, env) for _ in range(3)) * 1000, 1
            ),
        }
        if name == "local":
            route = functools.partial(_dataset_route, location, AGGREGATE)
            ds_s, ds = _median(route, args.repeat)
            assert ds == agg, "the dataset route disagrees with the Parquet route"
            out[name]["aggregate_dataset_route_ms"] = round(ds_s * 1000, 1)
    assert answers["local"] == answers["s3"], "local and object-storage lakes disagree"
    local, remote = out["local"], out["s3"]
    out["ratios_s3_over_local"] = {
        "write_time": round(remote["write_s"] / local["write_s"], 2),
        "count": round(remote["count_ms"] / local["count_ms"], 2),
        "aggregate": round(remote["aggregate_ms"] / local["aggregate_ms"], 2),
        "cli_aggregate": round(remote["cli_aggregate_ms"] / local["cli_aggregate_ms"], 2),
    }
    return out


if __name__ == "__main__":
    main()
