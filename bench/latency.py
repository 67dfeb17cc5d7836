"""Event-to-queryable latency of ``clew serve``: from the HTTP 200 of the request that carried
an event to the first SQL answer (``POST /v1/sql`` on the ``events`` lake table) that holds it.

Events are sent open-loop at a steady rate as small batches, each with a unique ``messageId``
sharing a per-run prefix and a ``bench_seq`` marker property; SQL is polled every
``--poll-ms``. An event's latency therefore includes up to one poll interval plus one SQL
round trip, which are reported too.

    .venv/bin/python bench/latency.py [--rate 200] [--batch 20] [--seconds 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from _serve import WRITE_KEY, BenchError, Server, clew_server, console, create_token, fail

TARGET_P99_S = 2.0
DRAIN_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Run:
    prefix: str
    sent_wall: dict[str, float] = field(default_factory=dict)  # messageId -> time.time() sent
    acked: dict[str, float] = field(default_factory=dict)  # messageId -> monotonic 200 time
    seen: dict[str, float] = field(default_factory=dict)  # messageId -> first SQL answer
    rejected: dict[int, int] = field(default_factory=dict)  # status -> requests
    errors: int = 0
    ack_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    sql_errors: list[str] = field(default_factory=list)
    sending: bool = True

    def message_id(self, seq: int) -> str:
        return f"{self.prefix}-0000-4000-8000-{seq:012x}"


def _event(run: Run, seq: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": "track",
        "event": "Bench Latency",
        "userId": f"bench-user-{seq % 97}",
        "properties": {"bench_seq": seq, "bench_run": run.prefix},
        "timestamp": now,
        "messageId": run.message_id(seq),
    }


async def _send(http: httpx.AsyncClient, run: Run, events: list[dict[str, Any]]) -> None:
    began = time.monotonic()
    body = {"batch": events, "sentAt": events[-1]["timestamp"]}
    sent = time.time()
    for event in events:
        run.sent_wall[event["messageId"]] = sent
    try:
        resp = await http.post("/v1/batch", json=body, auth=(WRITE_KEY, ""))
    except httpx.TransportError:
        run.errors += 1
        return
    done = time.monotonic()
    if resp.status_code != 200:
        run.rejected[resp.status_code] = run.rejected.get(resp.status_code, 0) + 1
        return
    run.ack_ms.append((done - began) * 1000)
    for event in events:
        run.acked[event["messageId"]] = done


async def sender(
    http: httpx.AsyncClient, run: Run, rate: float, batch: int, seconds: float
) -> None:
    """Open loop: a batch every ``batch / rate`` seconds whatever the response times."""
    interval = batch / rate
    began = time.monotonic()
    tasks = []
    seq = 0
    for i in range(round(seconds / interval)):
        await asyncio.sleep(max(0.0, began + i * interval - time.monotonic()))
        events = [_event(run, seq + k) for k in range(batch)]
        seq += batch
        tasks.append(asyncio.create_task(_send(http, run, events)))
    await asyncio.gather(*tasks)
    run.sending = False


async def poller(http: httpx.AsyncClient, run: Run, token: str, every: float) -> None:
    """Poll SQL until every acknowledged event was seen, or DRAIN_TIMEOUT_S after sending.

    Each poll asks only for events received since the oldest one not seen yet (less a
    margin), so answers stay small and below the SQL API's row cap."""
    headers = {"Authorization": f"Bearer {token}"}
    drain_deadline: float | None = None
    while True:
        pending = [t for m, t in run.sent_wall.items() if m not in run.seen]
        since = datetime.fromtimestamp(min(pending, default=time.time()) - 5.0, UTC)
        query = (
            f"SELECT message_id FROM events WHERE received_at >= TIMESTAMPTZ '{since.isoformat()}'"
            f" AND message_id LIKE '{run.prefix}-%'"
        )
        began = time.monotonic()
        resp = await http.post("/v1/sql", json={"query": query}, headers=headers)
        done = time.monotonic()
        if resp.status_code == 200:
            run.poll_ms.append((done - began) * 1000)
            for message_id, *_ in resp.json()["rows"]:
                run.seen.setdefault(message_id, done)
        elif len(run.sql_errors) < 5:
            run.sql_errors.append(f"{resp.status_code}: {resp.text[:300]}")
        if not run.sending:
            drain_deadline = drain_deadline or done + DRAIN_TIMEOUT_S
            if run.acked.keys() <= run.seen.keys() or done > drain_deadline:
                return
        await asyncio.sleep(max(0.0, began + every - time.monotonic()))


async def measure(server: Server, token: str, args: argparse.Namespace) -> Run:
    run = Run(prefix=secrets.token_hex(4))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await asyncio.gather(
            sender(http, run, args.rate, args.batch, args.seconds),
            poller(http, run, token, args.poll_ms / 1000),
        )
    return run


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def figures(run: Run) -> dict[str, Any]:
    latencies = [run.seen[m] - t for m, t in run.acked.items() if m in run.seen]
    return {
        "events_acked": len(run.acked),
        "events_seen": len(latencies),
        "events_never_seen": len(run.acked) - len(latencies),
        "requests_rejected": run.rejected,
        "request_errors": run.errors,
        "latency_p50_s": _quantile(latencies, 0.50),
        "latency_p90_s": _quantile(latencies, 0.90),
        "latency_p99_s": _quantile(latencies, 0.99),
        "latency_max_s": max(latencies, default=float("nan")),
        "latency_mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        "ack_p50_ms": _quantile(run.ack_ms, 0.50),
        "ack_p99_ms": _quantile(run.ack_ms, 0.99),
        "sql_polls": len(run.poll_ms),
        "sql_poll_p50_ms": _quantile(run.poll_ms, 0.50),
        "sql_poll_p99_ms": _quantile(run.poll_ms, 0.99),
        "sql_errors": run.sql_errors,
    }


def report(f: dict[str, Any], args: argparse.Namespace) -> None:
    out = console()
    table = Table(
        title=f"Event-to-queryable latency: {args.rate:.0f} events/s as {args.batch}-event "
        f"batches for {args.seconds:.0f} s, SQL polled every {args.poll_ms:.0f} ms"
    )
    table.add_column("figure")
    table.add_column("measured", justify="right")
    p99_ok = f["latency_p99_s"] < TARGET_P99_S and f["events_never_seen"] == 0
    verdict = "[green]met[/green]" if p99_ok else "[red]MISSED[/red]"
    table.add_row("latency p50", f"{f['latency_p50_s']:.3f} s")
    table.add_row("latency p90", f"{f['latency_p90_s']:.3f} s")
    table.add_row(
        f"latency p99 (target < {TARGET_P99_S:.0f} s)", f"{f['latency_p99_s']:.3f} s {verdict}"
    )
    table.add_row("latency max", f"{f['latency_max_s']:.3f} s")
    table.add_row("events acknowledged / seen in SQL", f"{f['events_acked']} / {f['events_seen']}")
    table.add_row(
        f"never seen (within {DRAIN_TIMEOUT_S:.0f} s of the last send)", str(f["events_never_seen"])
    )
    rejected = ", ".join(f"{k}: {v}" for k, v in f["requests_rejected"].items()) or "0"
    table.add_row(
        "requests refused (status: count) / failed", f"{rejected} / {f['request_errors']}"
    )
    table.add_row("HTTP ack p50 / p99", f"{f['ack_p50_ms']:.1f} / {f['ack_p99_ms']:.1f} ms")
    table.add_row(
        "SQL poll round trip p50 / p99",
        f"{f['sql_poll_p50_ms']:.1f} / {f['sql_poll_p99_ms']:.1f} ms ({f['sql_polls']} polls)",
    )
    out.print(table)
    for error in f["sql_errors"]:
        out.print(f"[red]SQL error[/red] {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--batch", type=int, default=20, help="events per request")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to send")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="SQL poll interval")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    try:
        with tempfile.TemporaryDirectory(prefix="clew-bench-") as tmp:
            work = Path(tmp)
            data_dir = work / "data"
            server = clew_server(data_dir, work)
            token = create_token(data_dir)
            with server:
                run = asyncio.run(measure(server, token, args))
    except BenchError as error:
        fail(error)

    result = figures(run)
    report(result, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
