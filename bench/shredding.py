"""What crypto-shredding costs on the Kafka log: the same workloads on the bare Kafka log and
on the shredding log (data keys in Redis, and in a SQLite ``keys.db``), in the same run, on
one real broker and one ``redis-server``.

Workloads, each on a fresh 4-partition topic:

- ``raw x1``: ``--threads`` threads each append one keyless record and wait until it is
  durable, as the collector does per request (the shredding log makes and stores a data key
  for each record: one key-store write per append);
- ``events x100``: batches of ``--batch`` records keyed by ``--people`` people, as the
  validate stage writes them (one data key per person, cached for ``privacy.key_cache_s``);
- ``consume``: one group member polls everything back (500 per poll, decrypting) and
  commits after each poll.

After a short warm-up of each log, ``--rounds`` rounds run the three logs in rotating order;
each figure is the median round.

Also the CPU cost of sealing and opening one record in this process (no I/O), in µs.

Kafka and Redis run on this machine and share the CPU with the client: on the 2-core
reference machine the ratios are what matters, not the absolute rates.

    .venv/bin/python bench/shredding.py [--records 20000] [--threads 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from clew.keys import KeyRing
from clew.keys._redis import RedisKeyStore
from clew.keys._sqlite import SqliteKeyStore
from clew.log.base import Log, Message, Record, TopicSpec
from clew.log.embedded import EmbeddedLog
from clew.log.kafka import KafkaLog
from clew.log.shredding import ShreddingLog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _kafka import KafkaBroker, missing  # noqa: E402
from _services import redis_server  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from log_backends import Result  # noqa: E402

PARTITIONS = 4


def event(i: int, people: int, size: int) -> Message:
    user = f"user-{i % people}@example.test"
    body = f'{{"type":"track","userId":"{user}","n":{i},"p":"'.encode()
    return Message(body + b"x" * max(0, size - len(body) - 2) + b'"}', key=user.encode())


def new_topic(log: Log) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    log.create_topic(TopicSpec(name, PARTITIONS))
    return name


def appends_x1(log: Log, args: argparse.Namespace) -> Result:
    topic = new_topic(log)
    per_thread = args.records // args.threads
    latencies: list[float] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        mine = []
        for i in range(per_thread):
            m = event(t * per_thread + i, args.people, args.value_bytes)
            started = time.perf_counter()
            log.append_sync(topic, [Message(m.value)])
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(args.threads)]
    started = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return Result(per_thread * args.threads, time.perf_counter() - started, latencies)


def appends_batched(log: Log, args: argparse.Namespace) -> tuple[str, Result]:
    topic = new_topic(log)
    n = args.records
    batches = [
        [event(i, args.people, args.value_bytes) for i in range(k, min(n, k + args.batch))]
        for k in range(0, n, args.batch)
    ]
    workers = max(1, args.threads // 4)
    latencies: list[float] = []
    lock = threading.Lock()

    def work(w: int) -> None:
        mine = []
        for batch in batches[w::workers]:
            started = time.perf_counter()
            log.append_sync(topic, batch)
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    started = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return topic, Result(n, time.perf_counter() - started, latencies)


def consume(log: Log, topic: str, n: int) -> Result:
    consumer = log.consumer(f"bench-{uuid.uuid4().hex[:8]}", [topic])
    got = 0
    started = time.perf_counter()
    try:
        while got < n:
            batch = consumer.poll(500, 1.0)
            got += len(batch)
            if batch:
                consumer.commit()
            if time.perf_counter() - started > 300:
                raise SystemExit(f"consumed only {got} of {n} records in 300 s")
    finally:
        consumer.close()
    return Result(got, time.perf_counter() - started, [])


def run(log: Log, args: argparse.Namespace) -> dict[str, Result]:
    out = {"raw x1": appends_x1(log, args)}
    topic, out[f"events x{args.batch}"] = appends_batched(log, args)
    out["consume"] = consume(log, topic, args.records)
    return out


def cpu_costs(ring: KeyRing, args: argparse.Namespace, tmp: Path) -> tuple[float, float]:
    """µs of CPU to seal, and to open, one keyed record with its key cached (no I/O: the
    inner log is only asked for the topic's partitions)."""
    inner = EmbeddedLog(tmp / "cpu-log.db")
    log = ShreddingLog(inner, ring, owns_keys=False)
    try:
        log.create_topic(TopicSpec("t", PARTITIONS))
        messages = [event(i, args.people, args.value_bytes) for i in range(10_000)]
        log.seal("t", messages[:1000])  # every person's key fetched once
        started = time.process_time()
        sealed = log.seal("t", messages)
        seal_us = (time.process_time() - started) / len(messages) * 1e6
        stored = [Record("t", 0, i, m.key, m.value, (), 0) for i, m in enumerate(sealed)]
        log.open_records(stored[:1000])
        started = time.process_time()
        log.open_records(stored)
        open_us = (time.process_time() - started) / len(stored) * 1e6
    finally:
        log.close()
    return seal_us, open_us


@contextmanager
def services() -> Iterator[tuple[str, str, Path]]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for sub in ("kafka", "redis"):
            (tmp / sub).mkdir()
        broker = stack.enter_context(KafkaBroker(tmp / "kafka"))
        redis = stack.enter_context(redis_server(tmp / "redis"))
        yield broker.bootstrap, redis.url, tmp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reason = missing()
    if reason is not None:
        raise SystemExit(f"cannot start Kafka: {reason}")
    master = b"bench-master-key".ljust(32, b"-")
    results: dict[str, dict[str, Result]] = {}
    with services() as (bootstrap, redis_url, tmp):
        openers: dict[str, Callable[[], Log]] = {
            "plain": lambda: KafkaLog(bootstrap, replication_factor=1),
            "redis keys": lambda: ShreddingLog(
                KafkaLog(bootstrap, replication_factor=1),
                KeyRing(RedisKeyStore(redis_url, prefix="bench"), master),
            ),
            "sqlite keys": lambda: ShreddingLog(
                KafkaLog(bootstrap, replication_factor=1),
                KeyRing(SqliteKeyStore(tmp / "keys.db"), master),
            ),
        }
        names = list(openers)
        rounds: dict[str, list[dict[str, Result]]] = {name: [] for name in names}
        # A short warm-up (the broker's JIT, Redis, the page cache), then rounds in rotating
        # order, so that no log always runs first or last.
        warm = argparse.Namespace(**{**vars(args), "records": max(1000, args.records // 10)})
        for name in names:
            log = openers[name]()
            try:
                run(log, warm)
            finally:
                log.close()
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                print(f"round {r + 1}: {name} ...", flush=True)
                log = openers[name]()
                try:
                    rounds[name].append(run(log, args))
                finally:
                    log.close()
        for name, done in rounds.items():
            results[name] = {
                w: sorted((d[w] for d in done), key=lambda x: x.rate)[len(done) // 2]
                for w in done[0]
            }
        ring = KeyRing(RedisKeyStore(redis_url, prefix="bench"), master)
        try:
            seal_us, open_us = cpu_costs(ring, args, tmp)
        finally:
            ring.close()

    print(
        f"\n{args.records:,} records of {args.value_bytes} B, {PARTITIONS} partitions, "
        f"{args.people} people, {args.threads} appending threads (x1), "
        f"{max(1, args.threads // 4)} (x{args.batch})\n"
    )
    header = f"{'workload':<14}{'log':<13}{'records/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for workload in results["plain"]:
        base = results["plain"][workload].rate
        for name, by_workload in results.items():
            res = by_workload[workload]
            p50 = f"{res.percentile(50):9.2f}" if res.latencies_ms else f"{'':>9}"
            p99 = f"{res.percentile(99):9.2f}" if res.latencies_ms else f"{'':>9}"
            rate = f"{res.rate:>11,.0f}{p50}{p99}{res.rate / base:>7.2f}x"
            print(f"{workload:<14}{name:<13}{rate}")
    print(f"\nCPU per record, key cached: seal {seal_us:.1f} µs, open {open_us:.1f} µs")


if __name__ == "__main__":
    main()
