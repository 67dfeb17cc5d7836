"""Read-your-writes latency of ``clew serve``: an identify, then at once ``GET
/v1/profiles/user_id:…?after=POSITION&wait_ms=…`` with the position its answer named, until
that read holds the trait just sent (docs/profile-api.md, "Read your writes").

A closed loop of ``--samples`` rounds, each with a new trait value for one of ``--people``
users; optionally other traffic (``--background-rate`` track events per second, in batches
of 20) keeps the stages busy meanwhile. Reported per round: the identify's answer (durable
append), the read with ``after`` (the wait for validate and the profiles stage, plus the
read), the two together, and the same read without ``after`` as the baseline. Every read
with ``after`` must hold the value just written, and none may be ``409 not_yet``.

    .venv/bin/python bench/read_your_writes.py [--samples 300] [--people 50]
        [--background-rate 0] [--wait-ms 5000] [--kafka HOST:PORT --redis redis://…]

With ``--kafka`` (a running broker) and ``--redis`` (a running Redis), ``clew serve`` uses
them for its log and serving store instead of its data directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.table import Table

from _serve import WRITE_KEY, BenchError, clew_server, console, create_token, fail

BACKGROUND_BATCH = 20


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _background(url: str, rate: float, stop: threading.Event, sent: list[int]) -> None:
    """Track events at ``rate`` per second, in batches, until ``stop``."""
    interval = BACKGROUND_BATCH / rate
    seq = 0
    with httpx.Client(base_url=url, auth=(WRITE_KEY, ""), timeout=30) as client:
        due = time.monotonic()
        while not stop.is_set():
            batch = [
                {"type": "track", "event": "Bench Viewed", "userId": f"bg-{(seq + i) % 500}"}
                for i in range(BACKGROUND_BATCH)
            ]
            client.post("/v1/batch", json={"batch": batch})
            seq += BACKGROUND_BATCH
            sent[0] = seq
            due += interval
            stop.wait(max(0.0, due - time.monotonic()))


def measure(url: str, token: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per round, in ms: ``ack``, ``after`` (the read with after), ``total``, ``plain``."""
    out: dict[str, list[float]] = {"ack": [], "after": [], "total": [], "plain": []}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(args.samples):
            user = f"rw-{i % args.people}"
            began = time.perf_counter()
            sent = client.post(
                "/v1/identify",
                json={"userId": user, "traits": {"bench_round": i}},
                auth=(WRITE_KEY, ""),
            )
            acked = time.perf_counter()
            if sent.status_code != 200:
                raise BenchError(f"identify answered {sent.status_code}: {sent.text}")
            position = sent.headers["Clew-Position"]
            read = client.get(
                f"/v1/profiles/user_id:{user}",
                params={"after": position, "wait_ms": args.wait_ms},
                headers=headers,
            )
            done = time.perf_counter()
            if read.status_code != 200:
                raise BenchError(
                    f"the read after {position} answered {read.status_code}: {read.text}"
                )
            if read.json()["traits"].get("bench_round") != i:
                raise BenchError(f"the read after {position} does not hold round {i}")
            plain_began = time.perf_counter()
            client.get(f"/v1/profiles/user_id:{user}", headers=headers)
            out["plain"].append((time.perf_counter() - plain_began) * 1000)
            out["ack"].append((acked - began) * 1000)
            out["after"].append((done - acked) * 1000)
            out["total"].append((done - began) * 1000)
    return out


def report(results: dict[str, list[float]], args: argparse.Namespace, background: int) -> None:
    table = Table(title=f"read your writes: {args.samples} rounds, {args.people} people")
    for column in ("step", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"):
        table.add_column(column, justify="left" if column == "step" else "right")
    names = {
        "ack": "identify answered (durable)",
        "after": "GET ?after= answered",
        "total": "identify → profile holding it",
        "plain": "GET without after (baseline)",
    }
    for key, label in names.items():
        values = results[key]
        table.add_row(
            label,
            *(f"{_quantile(values, q):.1f}" for q in (0.5, 0.9, 0.99)),
            f"{max(values):.1f}",
            f"{statistics.fmean(values):.1f}",
        )
    out = console()
    out.print(table)
    load = os.getloadavg()
    out.print(
        f"background: {background} track events at {args.background_rate:g}/s; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--background-rate", type=float, default=0.0)
    parser.add_argument("--wait-ms", type=int, default=5000)
    parser.add_argument("--kafka", help="bootstrap servers of a running Kafka broker")
    parser.add_argument("--redis", help="URL of a running Redis, for the serving store")
    args = parser.parse_args()
    env: dict[str, str] = {}
    if args.kafka:
        env |= {
            "CLEW_LOG__BACKEND": "kafka",
            "CLEW_LOG__BOOTSTRAP_SERVERS": args.kafka,
            "CLEW_LOG__REPLICATION_FACTOR": "1",
        }
    if args.redis:
        env |= {
            "CLEW_STORE__BACKEND": "redis",
            "CLEW_STORE__REDIS_URL": args.redis,
            "CLEW_STORE__REDIS_PREFIX": f"ryw-{os.getpid()}",
        }
    # For `clew serve` and the `clew sources` and `clew tokens` commands before it alike.
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="clew-ryw-") as tmp:
        data_dir, log_dir = Path(tmp) / "data", Path(tmp)
        try:
            with clew_server(data_dir, log_dir) as server:
                token = create_token(data_dir)
                stop, sent = threading.Event(), [0]
                feeder = threading.Thread(
                    target=_background, args=(server.url, args.background_rate, stop, sent)
                )
                if args.background_rate > 0:
                    feeder.start()
                try:
                    results = measure(server.url, token, args)
                finally:
                    stop.set()
                    if feeder.is_alive():
                        feeder.join()
        except BenchError as exc:
            fail(exc)
            return
    report(results, args, sent[0])
    log = "kafka" if args.kafka else "embedded"
    console().print(f"log: {log}; serving store: {'redis' if args.redis else 'sqlite'}")


if __name__ == "__main__":
    main()
