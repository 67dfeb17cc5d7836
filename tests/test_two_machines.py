"""Clew on two machines: each "machine" has its own data directory (nothing shared on disk).
Machine a runs `clew serve` (a collector, every stage, the APIs and the privacy runner: the
lake machine, whose person index serves deletions); machine b runs a collector and workers
of the validate and profiles stages. They share only the services a real deployment shares:
a Kafka broker (the log), a Redis (the serving store, deduplication claims, the suppression
list, the audience definitions and the data keys of Kafka records) and an S3-compatible
bucket (the lake and its cold tier). This is the worked configuration of the README, on
loopback.

Events sent alternately to the two collectors must land in the lake once each; the profiles,
computed trait and audience must equal the embedded mode's; a deletion run on one machine must
leave no trace of the person in Kafka, Redis, the bucket or either machine's data directory,
and leave everyone else as they were."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from _kafka import KafkaBroker
from _s3 import S3
from _scaleout import (
    WRITE_KEY,
    Processes,
    answering,
    batches,
    clew,
    definitions,
    embedded_profiles,
    events,
    lake_counts,
    orders,
    profiles,
    send,
    wait_for,
)
from _services import require_module
from clew.audiences.repository import open_repository
from clew.background import free_port
from clew.config import Settings, load_settings

require_module("redis", "pip install -e '.[redis]'")

# Clew's fixed topic names: on the session's broker, emptied first.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("empty_kafka")]

PEOPLE = 60
ORDERS_PER_PERSON = 8
# The stages machine b runs (machine a runs them all in `clew serve`).
B_STAGES = ("validate", "profiles")
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 150.0
# The person erased at the end, by every identifier they used.
ERASED = ("user_id:user-0", "anonymous_id:anon-0", "email:person0@shop.test")


def _environment(
    kafka: KafkaBroker, redis_url: str, s3: S3, bucket: str, prefix: str
) -> dict[str, str]:
    """The settings every machine shares (one configuration file in a real deployment)."""
    return {
        "CLEW_LOG__BACKEND": "kafka",
        "CLEW_LOG__BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CLEW_LOG__PARTITIONS": "4",
        "CLEW_LOG__REPLICATION_FACTOR": "1",
        "CLEW_LOG__KAFKA_CONSUMER": '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}',
        "CLEW_STORE__BACKEND": "redis",
        "CLEW_STORE__REDIS_URL": redis_url,
        "CLEW_STORE__REDIS_PREFIX": prefix,
        "CLEW_LAKE__URI": f"s3://{bucket}/lake",
        "CLEW_LAKE__STORAGE_OPTIONS": json.dumps(s3.storage_options),
        "CLEW_LIFECYCLE__COLD_URI": f"s3://{bucket}/cold",
        # Identifier hashes and data-key wrapping must agree on every machine.
        "CLEW_PRIVACY__SALT": "two-machines-shared-secret",
    }


def _files_mentioning(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found.extend(f"{path}: {n.decode()}" for n in needles if n in data)
    return found


def test_two_machines_share_one_customer_database(
    kafka_broker: KafkaBroker, redis_url: str, s3: S3, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    prefix = f"m{uuid.uuid4().hex[:10]}"
    shared = _environment(kafka_broker, redis_url, s3, bucket, prefix)
    machines = {name: tmp_path / f"machine-{name}" for name in ("a", "b")}
    envs = {
        name: {**os.environ, **shared, "CLEW_DATA_DIR": str(data_dir)}
        for name, data_dir in machines.items()
    }
    # What a deploy pipeline applies on every machine: the source and its write key.
    for name in machines:
        created = clew(envs[name], "sources", "create", "web", "--write-key", WRITE_KEY)
        assert created.returncode == 0, created.stderr
    a = _settings_from(envs["a"])
    # The audience definitions are pushed once, on machine a: they are kept in Redis, so
    # machine b's profiles worker reads the same ones.
    open_repository(a).push(definitions())

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs, envs["a"])
    try:
        ports = {name: free_port() for name in machines}
        urls = [f"http://127.0.0.1:{ports[name]}" for name in machines]
        with httpx.Client(timeout=30) as client:
            # Machine a's `clew serve` creates the topics before anything else starts.
            procs.start("a-serve", "serve", "--port", str(ports["a"]), env=envs["a"])
            first = answering(client, urls[0])
            wait_for("machine a's clew serve", first, START_TIMEOUT_S, procs.tails)
            procs.start("b-collector", "collector", "--port", str(ports["b"]), env=envs["b"])
            for stage in B_STAGES:
                procs.start(f"b-{stage}", "worker", "--stage", stage, env=envs["b"])
            wait_for("both collectors", answering(client, *urls), START_TIMEOUT_S, procs.tails)

            acknowledged: list[list[dict[str, Any]]] = []
            for n, batch in enumerate(batches(events(PEOPLE, ORDERS_PER_PERSON))):
                if send(client, urls[n % 2], batch):
                    acknowledged.append(batch)
                time.sleep(0.02)
        acked_ids = {ev["messageId"] for batch in acknowledged for ev in batch}
        assert len(acked_ids) == PEOPLE * (2 + ORDERS_PER_PERSON), "every request acknowledged"
        wait_for(
            "every event in the lake in the bucket",
            lambda: set(lake_counts(a)) >= acked_ids,
            SETTLE_TIMEOUT_S,
            lambda: f"{len(acked_ids - set(lake_counts(a)))} missing\n{procs.tails()}",
        )
        acked_orders = PEOPLE * ORDERS_PER_PERSON
        wait_for(
            "every order in the profiles in Redis",
            lambda: orders(profiles(a, PEOPLE)) >= acked_orders,
            SETTLE_TIMEOUT_S,
            lambda: f"{orders(profiles(a, PEOPLE))} of {acked_orders}\n{procs.tails()}",
        )
        counts = lake_counts(a)
        assert set(counts) == acked_ids
        assert all(n == 1 for n in counts.values()), "an event in the lake twice"
        before = profiles(a, PEOPLE)
        spenders = sum(1 for *_, audiences in before.values() if audiences == ("big_spender",))
        assert 0 < spenders < PEOPLE, "the audience must split the people"
        assert before == embedded_profiles(tmp_path / "embedded", acknowledged, PEOPLE)
        # Nothing of a profile was written to either machine's disk: no SQLite serving store,
        # no local lake.
        for data_dir in machines.values():
            assert not (data_dir / "profiles.db").exists()
            assert not (data_dir / "lake").exists()

        # A deletion requested on machine a, run by its `clew serve` while every worker keeps
        # running.
        erased = clew(envs["a"], "privacy", "request", "delete", ERASED[0], "--wait")
        assert erased.returncode == 0, erased.stdout + erased.stderr
        for name in machines:
            verified = clew(envs[name], "privacy", "verify", *ERASED)
            assert verified.returncode == 0, f"machine {name}: {verified.stdout}"
        after = profiles(a, PEOPLE)
        assert "user-0" not in after
        assert after == {k: v for k, v in before.items() if k != "user-0"}
        remaining = lake_counts(a)
        gone = {"identify-0", "alias-0"} | {f"order-0-{j}" for j in range(ORDERS_PER_PERSON)}
        assert set(remaining) == acked_ids - gone
    finally:
        procs.stop()
    needles = [b"person0@shop.test", b'user-0"', b'anon-0"']
    for data_dir in machines.values():
        assert _files_mentioning(data_dir, needles) == []


def _settings_from(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` reads."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings(None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
