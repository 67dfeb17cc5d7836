"""What Redis persistence costs the key store of crypto-shredding (docs/privacy.md, "The data
keys must outlive a Redis restart"): the Redis key store's writes on a ``redis-server``
without persistence, with an append-only file fsynced every second (what Clew requires at
least), and with ``appendfsync always``, in the same run.

Workloads, through :class:`clew.keys._redis.RedisKeyStore` from one thread:

- ``put x1``: one single-record data key per call, as the collector's sealing thread does
  for a lone request (``raw`` records have a key each);
- ``get_or_create x10``: ten new person keys per call, as the validate stage meets new
  people.

``--rounds`` rounds run the three servers in rotating order; each figure is the median.

    .venv/bin/python bench/key_store_persistence.py [--keys 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clew.keys._redis import RedisKeyStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _services import LOOPBACK, _answers, free_port, start, stop  # noqa: E402

MODES = {
    "no persistence": ["--appendonly", "no"],
    "appendfsync everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "appendfsync always": ["--appendonly", "yes", "--appendfsync", "always"],
}


@contextmanager
def redis(workdir: Path, options: list[str]) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: run `sh scripts/redis.sh`")
    port = free_port()
    argv = [binary, "--bind", LOOPBACK, "--port", str(port), "--dir", str(workdir)]
    argv += ["--save", "", "--logfile", "", *options]
    proc = start(
        "redis", argv, workdir, functools.partial(_answers, LOOPBACK, port, b"PING\r\n", b"+PONG")
    )
    try:
        yield f"redis://{LOOPBACK}:{port}"
    finally:
        stop(proc)


def measure(url: str, keys: int) -> tuple[float, float]:
    """(single-key puts per second, person keys created per second)."""
    store = RedisKeyStore(url, prefix="bench-" + os.urandom(4).hex())
    try:
        began = time.perf_counter()
        for _ in range(keys):
            store.put({os.urandom(16): os.urandom(60)}, 3_600_000)
        puts = keys / (time.perf_counter() - began)
        began = time.perf_counter()
        for _ in range(keys // 10):
            store.get_or_create({os.urandom(32): os.urandom(60) for _ in range(10)})
        created = (keys // 10 * 10) / (time.perf_counter() - began)
    finally:
        store.close()
    return puts, created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    names = list(MODES)
    for round_ in range(args.rounds):
        for mode in names[round_ % len(names) :] + names[: round_ % len(names)]:
            with tempfile.TemporaryDirectory() as tmp, redis(Path(tmp), MODES[mode]) as url:
                results[mode].append(measure(url, args.keys))
    print(f"{'redis-server':<22} {'put x1 /s':>10} {'get_or_create x10 keys/s':>25}")
    for mode, rounds in results.items():
        puts = statistics.median(r[0] for r in rounds)
        created = statistics.median(r[1] for r in rounds)
        print(f"{mode:<22} {puts:>10,.0f} {created:>25,.0f}")


if __name__ == "__main__":
    main()
