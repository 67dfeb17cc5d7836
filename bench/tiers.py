"""Moving old lake partitions to the cold tier (`clew lifecycle run`; target: >= 200k
events/s).

Setup (not timed): a lake ``events`` Delta table with ``--events`` events spread evenly over
``--days`` days, all older than ``lifecycle.warm_days``, plus ``--young`` events of the last
30 days that stay warm. Each day's rows are in five files (five appends, as the lake sink's
compaction leaves them), snappy-compressed like the sink writes them. Columns are built with
Arrow compute (fast), with the lake's schema and realistic variety: user and device ids,
event names, JSON context (IP, page, user agent) and properties.

Measured, in this order, over the same rows, each in a fresh process (so that its peak RSS is
its own):

- baseline ``floor``: a plain Parquet copy: Arrow reads the old partitions' files and writes
  them to one Parquet file with the cold tier's codec (zstd 3, no dictionary). No Delta, no
  partitions: the cost of decoding and re-encoding the rows, which any move pays;
- ``move``: :func:`clew.lake.tiers.run_lifecycle` with that clock: cold append, warm
  delete, vacuum of the warm table (retention 0, so the moved files are gone), and the
  statistics before and after.

    .venv/bin/python bench/tiers.py [--events 1000000] [--days 200] [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

from clew.config import LakeSettings, LifecycleSettings, Settings
from clew.lake.tables import EVENTS
from clew.lake.tiers import run_lifecycle

TARGET_EVENTS_S = 200_000
_START = datetime(2025, 1, 1, tzinfo=UTC)
_APPENDS = 5
_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)
_EVENT_NAMES = ("Product Viewed", "Added to Cart", "Order Completed", "Searched", "Signed In")


def _text(values: pa.Array) -> pa.Array:
    return pc.cast(values, pa.string())


def _mod(idx: pa.Array, n: int) -> pa.Array:
    return pc.subtract(idx, pc.multiply(pc.divide(idx, n), n))


def events_table(idx: pa.Array, first_us: int, step_us: int) -> pa.Table:
    """Events number ``idx``: event ``i`` happens at ``first_us + i * step_us``."""
    n = len(idx)
    join = pc.binary_join_element_wise
    ts = pc.cast(pc.add(pc.multiply(idx, step_us), first_us), pa.timestamp("us", tz="UTC"))
    user = join("u-", _text(_mod(idx, 60_000)), "")
    ctx = join(
        '{"ip":"203.0.',
        _text(_mod(idx, 251)),
        ".",
        _text(_mod(pc.divide(idx, 7), 253)),
        '","library":{"name":"analytics.js","version":"5.2.0"},"page":{"path":"/p/',
        _text(_mod(idx, 997)),
        '","url":"https://shop.test/p/',
        _text(_mod(idx, 997)),
        '"},"userAgent":"',
        pc.take(pa.array(_AGENTS), _mod(idx, len(_AGENTS))),
        '"}',
        "",
    )
    props = join(
        '{"product_id":"sku-',
        _text(_mod(idx, 499)),
        '","price":',
        _text(pc.add(_mod(idx, 300), 0.99)),
        ',"currency":"EUR"}',
        "",
    )
    strings = pa.nulls(n, pa.string())
    cols = {
        "message_id": join("m-", _text(idx), ""),
        "type": pa.repeat("track", n).cast(pa.string()),
        "event": pc.take(pa.array(_EVENT_NAMES), _mod(idx, len(_EVENT_NAMES))),
        "name": strings,
        "category": strings,
        "user_id": user,
        "anonymous_id": join("a-", _text(_mod(pc.multiply(idx, 7919), 150_000)), ""),
        "group_id": strings,
        "previous_id": strings,
        "timestamp": ts,
        "original_timestamp": ts,
        "sent_at": ts,
        "received_at": ts,
        "source_id": pa.repeat("web", n).cast(pa.string()),
        "context": ctx,
        "properties": props,
        "traits": pa.repeat("{}", n).cast(pa.string()),
        "integrations": pa.repeat("{}", n).cast(pa.string()),
        "event_date": pc.cast(ts, pa.date32()),
    }
    return pa.table(cols, schema=EVENTS.schema)


def build_lake(settings: Settings, events: int, days: int, young: int) -> None:
    path = str(settings.lake_path / EVENTS.name)
    first = int(_START.timestamp() * 1_000_000)
    step = days * 86_400_000_000 // events
    young_first = first + (days + 120) * 86_400_000_000
    young_step = 30 * 86_400_000_000 // max(young, 1)
    for k in range(_APPENDS):
        # Append k holds every fifth event, so each day ends up in five files.
        idx = pa.array(range(k, events, _APPENDS), pa.int64())
        batch = events_table(idx, first, step)
        if young:
            yidx = pa.array(range(k, young, _APPENDS), pa.int64())
            batch = pa.concat_tables([batch, events_table(yidx, young_first, young_step)])
        write_deltalake(path, batch, mode="append", partition_by=[EVENTS.partition_by])


def floor_copy(settings: Settings, before: date, out: Path) -> tuple[int, float]:
    """Plain Parquet copy of the partitions dated before ``before``: (rows, seconds)."""
    dt = DeltaTable(str(settings.lake_path / EVENTS.name))
    base = dt.table_uri.removeprefix("file://").rstrip("/")
    actions = pa.table(dt.get_add_actions(flatten=True))
    files = [
        f"{base}/{p}"
        for p, d in zip(
            actions["path"].to_pylist(), actions["partition.event_date"].to_pylist(), strict=True
        )
        if d < before
    ]
    started = time.perf_counter()
    table = pds.dataset(files, format="parquet").to_table()
    pq.write_table(table, out, compression="zstd", compression_level=3, use_dictionary=False)
    return table.num_rows, time.perf_counter() - started


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.parquet"))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        lake=LakeSettings(vacuum_retention_hours=0),
        lifecycle=LifecycleSettings(warm_days=90),
    )


def _step(name: str, data_dir: Path, now: datetime) -> dict[str, Any]:
    """One measurement in a fresh process, so that its peak RSS is its own."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--step",
            name,
            "--data-dir",
            str(data_dir),
            "--now",
            now.isoformat(),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _run_step(name: str, data_dir: Path, now: datetime) -> None:
    settings = _settings(data_dir)
    cpu = time.process_time()
    if name == "floor":
        rows, seconds = floor_copy(settings, (now - timedelta(days=90)).date(), data_dir / "f.pq")
        size = (data_dir / "f.pq").stat().st_size
        doc = {"rows": rows, "seconds": seconds, "bytes": size}
    else:
        warm_disk = _du(settings.lake_path)
        report = run_lifecycle(settings, int(now.timestamp() * 1000))
        events = report.tables[0]
        doc = {
            "partitions": events.partitions_moved,
            "rows": events.rows_moved,
            "seconds": report.seconds,
            "warm_disk_before": warm_disk,
            "warm_disk_after": _du(settings.lake_path),
            "warm_moved_bytes": events.warm_bytes_before - events.warm_bytes_after,
            "cold_bytes": events.cold_bytes_after,
            "files_vacuumed": events.files_vacuumed,
        }
    # CPU seconds of every thread: unlike wall time, hardly inflated by other processes.
    doc |= {"cpu_s": time.process_time() - cpu, "peak_mb": _peak_mb()}
    print(json.dumps(doc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to move")
    parser.add_argument("--days", type=int, default=200)
    parser.add_argument("--young", type=int, default=100_000, help="events that stay warm")
    parser.add_argument("--quick", action="store_true", help="100k events over 40 days")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--step", choices=("floor", "move"), help=argparse.SUPPRESS)
    parser.add_argument("--now", type=datetime.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step is not None:
        _run_step(args.step, args.data_dir, args.now)
        return
    if args.quick:
        args.events, args.days, args.young = 100_000, 40, 10_000
    own = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="clew-tiers-")) if own else args.data_dir
    try:
        started = time.perf_counter()
        build_lake(_settings(data_dir), args.events, args.days, args.young)
        print(
            f"setup: {args.events:,} old events over {args.days} days + {args.young:,} young "
            f"in {time.perf_counter() - started:.1f} s ({_du(data_dir / 'lake') / 1e6:.0f} MB)"
        )
        now = _START + timedelta(days=args.days + 120 + 31)
        floor = _step("floor", data_dir, now)
        floor_rate = floor["rows"] / floor["seconds"]
        print(
            f"floor (plain Parquet read + write): {floor['rows']:,} rows in "
            f"{floor['seconds']:.2f} s = {floor_rate:,.0f} events/s "
            f"({floor['bytes'] / 1e6:.1f} MB; {floor['cpu_s']:.2f} CPU s, "
            f"peak RSS {floor['peak_mb']:.0f} MB)"
        )
        move = _step("move", data_dir, now)
        rate = move["rows"] / move["seconds"]
        print(
            f"move: {move['partitions']} partitions, {move['rows']:,} events in "
            f"{move['seconds']:.2f} s = {rate:,.0f} events/s "
            f"({rate / floor_rate:.0%} of the floor; target >= {TARGET_EVENTS_S:,}); "
            f"{move['cpu_s']:.2f} CPU s, peak RSS {move['peak_mb']:.0f} MB"
        )
        print(
            f"  warm: {move['warm_disk_before'] / 1e6:.1f} MB on disk -> "
            f"{move['warm_disk_after'] / 1e6:.1f} MB ({move['files_vacuumed']} files vacuumed); "
            f"cold: {move['cold_bytes'] / 1e6:.1f} MB for {move['warm_moved_bytes'] / 1e6:.1f} MB "
            f"of warm files; {'PASS' if rate >= TARGET_EVENTS_S else 'BELOW TARGET'}"
        )
    finally:
        if own:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
