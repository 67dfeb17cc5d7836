"""Log backends side by side: the embedded log (SQLite) and Kafka, in the same run.

For each backend, on a fresh 4-partition topic:

- append, one record per call: ``--threads`` threads each append one keyed record and wait
  until it is durable, as the collector does per request; records/s and latency percentiles;
- append, ``--batch`` records per call: the same with batches (the validate stage's shape);
- consume: one group member polls everything back (500 per poll) and commits after each
  poll; records/s;
- hop: a consumer in another process, waiting in ``poll``, gets ``--hop-appends`` records
  appended one at a time a few ms apart; latency from the append's return to the consumer's
  (both on the machine's monotonic clock), the delay an event meets at each hop between
  `clew serve`'s processes. It can be slightly negative when the consumer wakes before the
  appender hears its append is durable.

Kafka runs as a real single-node broker (tests/_kafka.py; fetch its jars first with
``scripts/kafka.sh``) on this machine, so it shares the CPU with the Python client: on the
2-core reference machine the figures are a floor for a broker on its own host.

    .venv/bin/python bench/log_backends.py [--records 40000] [--threads 16] [--batch 100]
        [--hop-appends 300] [--backends embedded,kafka]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from clew.log.base import Log, Message, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.log.kafka import KafkaLog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _kafka import KafkaBroker, missing  # noqa: E402

PARTITIONS = 4


@dataclass
class Result:
    records: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def percentile(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]


def message(i: int, value_bytes: int) -> Message:
    return Message(b"%08d" % i + b"x" * (value_bytes - 8), key=b"user-%d" % (i % 10_000))


def append_load(log: Log, topic: str, records: int, threads: int, batch: int, size: int) -> Result:
    """``threads`` threads append ``records`` in calls of ``batch``, each waiting until durable."""
    per_thread = records // threads // batch
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(w: int) -> None:
        start.wait()
        for call in range(per_thread):
            base = (w * per_thread + call) * batch
            messages = [message(base + j, size) for j in range(batch)]
            began = time.perf_counter()
            log.append_sync(topic, messages)
            latencies[w].append((time.perf_counter() - began) * 1000)

    workers = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in workers:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - began
    return Result(per_thread * batch * threads, elapsed, [x for ls in latencies for x in ls])


def consume_all(log: Log, topic: str, expected: int) -> Result:
    consumer = log.consumer(f"bench-{uuid.uuid4().hex[:8]}", [topic])
    got = 0
    began = time.perf_counter()
    deadline = began + 300
    while got < expected and time.perf_counter() < deadline:
        records = consumer.poll(max_records=500, timeout_s=1.0)
        if records:
            got += len(records)
            consumer.commit()
    elapsed = time.perf_counter() - began
    consumer.close()
    if got < expected:
        raise SystemExit(f"consumed only {got} of {expected} records")
    return Result(got, elapsed, [])


def hop_consumer(backend: str, where: str, topic: str) -> None:
    """The other process of :func:`hop`: prints ``ready`` once it consumes ``topic``, then
    each record's value with the monotonic time it got it, until the record ``stop``."""
    log = EmbeddedLog(Path(where)) if backend == "embedded" else KafkaLog(where)
    consumer = log.consumer(f"hop-{uuid.uuid4().hex[:8]}", [topic])
    while not consumer.assignment():
        consumer.poll(timeout_s=0.1)
    print("ready", flush=True)
    while True:
        for r in consumer.poll(timeout_s=10):
            print(r.value.decode(), time.monotonic(), flush=True)
            if r.value == b"stop":
                consumer.close()
                log.close()
                return


def hop(log: Log, backend: str, where: str, appends: int) -> Result:
    topic = f"hop-{uuid.uuid4().hex[:8]}"
    log.create_topic(TopicSpec(topic, 1))
    argv = [sys.executable, __file__, "--hop-consumer", backend, where, topic]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        if child.stdout.readline() != b"ready\n":
            raise SystemExit(f"the hop consumer of {backend} did not start")
        committed: dict[str, float] = {}
        began = time.perf_counter()
        for i in range(appends):
            # Spaced out, so that the consumer is waiting when each record comes.
            time.sleep(0.004 + (i % 5) * 0.002)
            log.append_sync(topic, [Message(b"%d" % i)])
            committed[str(i)] = time.monotonic()
        log.append_sync(topic, [Message(b"stop")])
        try:
            out, _ = child.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            raise SystemExit(f"the hop consumer of {backend} did not get every record") from None
        elapsed = time.perf_counter() - began
    seen = dict(line.split() for line in out.decode().splitlines())
    latencies = [(float(seen[k]) - t) * 1000 for k, t in committed.items() if k in seen]
    if len(latencies) < appends:
        raise SystemExit(f"the hop consumer of {backend} got {len(latencies)} of {appends}")
    return Result(appends, elapsed, latencies)


def run(log: Log, where: tuple[str, str], args: argparse.Namespace) -> dict[str, Result]:
    single, batched = f"single-{uuid.uuid4().hex[:8]}", f"batched-{uuid.uuid4().hex[:8]}"
    for name in (single, batched):
        log.create_topic(TopicSpec(name, PARTITIONS))
    # Warm-up: connections, metadata, the writer thread.
    append_load(log, single, args.threads * 2, args.threads, 1, args.value_bytes)
    out = {
        "append x1": append_load(log, single, args.records // 4, args.threads, 1, args.value_bytes),
        f"append x{args.batch}": append_load(
            log, batched, args.records, max(1, args.threads // 4), args.batch, args.value_bytes
        ),
    }
    out["consume"] = consume_all(log, batched, out[f"append x{args.batch}"].records)
    out["hop"] = hop(log, *where, args.hop_appends)
    return out


# Each opener yields the log and how another process opens the same one (backend, where).
@contextmanager
def embedded() -> Iterator[tuple[Log, tuple[str, str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        log = EmbeddedLog(Path(tmp) / "log.db")
        try:
            yield log, ("embedded", str(Path(tmp) / "log.db"))
        finally:
            log.close()


@contextmanager
def kafka() -> Iterator[tuple[Log, tuple[str, str]]]:
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker(Path(tmp)) as broker:
        log = KafkaLog(broker.bootstrap, replication_factor=1)
        try:
            yield log, ("kafka", broker.bootstrap)
        finally:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--value-bytes", type=int, default=300)
    parser.add_argument("--hop-appends", type=int, default=300)
    parser.add_argument("--backends", default="embedded,kafka", help="which, comma-separated")
    parser.add_argument("--hop-consumer", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hop_consumer:
        hop_consumer(*args.hop_consumer)
        return
    names = args.backends.split(",")
    reason = missing() if "kafka" in names else None
    if reason is not None:
        raise SystemExit(f"cannot start Kafka: {reason}")

    openers: dict[str, Callable[[], AbstractContextManager[tuple[Log, tuple[str, str]]]]] = {
        "embedded": embedded,
        "kafka": kafka,
    }
    results: dict[str, dict[str, Result]] = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        with openers[name]() as (log, where):
            results[name] = run(log, where, args)

    print(
        f"\n{args.records:,} records of {args.value_bytes} B, {PARTITIONS} partitions, "
        f"{args.threads} appending threads (x1), {max(1, args.threads // 4)} (x{args.batch})\n"
    )
    header = f"{'workload':<14}{'backend':<10}{'records/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
    print(header)
    print("-" * len(header))
    for workload in results[names[0]]:
        for name in names:
            r = results[name][workload]
            rate = f"{'':>12}" if workload == "hop" else f"{r.rate:>12,.0f}"
            p50 = f"{r.percentile(50):9.2f}" if r.latencies_ms else f"{'':>9}"
            p99 = f"{r.percentile(99):9.2f}" if r.latencies_ms else f"{'':>9}"
            print(f"{workload:<14}{name:<10}{rate}{p50}{p99}")
        if len(results) == 2 and workload != "hop":
            ratio = results["kafka"][workload].rate / results["embedded"][workload].rate
            print(f"{'':<14}{'kafka/embedded throughput':<31}{ratio:>5.2f}x")


if __name__ == "__main__":
    main()
