"""The data keys that decrypt Kafka records are never lost with Redis (docs/privacy.md,
"Where the data keys live"): a deployment refuses a Redis that keeps no append-only file,
with one line naming the setting; with one, a Redis killed and restarted gives every key
back, so no acknowledged record becomes unreadable, and a destroyed key stays destroyed, so a
restart never resurrects a shredded person. On a Redis Cluster, the primary holding the keys'
slot is the one asked. Real Kafka, real redis-server processes."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from _kafka import KafkaBroker
from _redis_cluster import ClusterService
from _services import LOOPBACK, _answers, free_port, redis_server, require_module, start, stop
from _support import clew_bin, make_settings
from clew.backends import open_keyring
from clew.config import LogSettings, PrivacySettings, Settings, StoreSettings
from clew.keys import KeyStoreError
from clew.keys._redis import KeyStoreNotDurableError, RedisKeyStore
from clew.log.base import Log, Message, Record, TopicSpec
from clew.log.kafka import KafkaLog
from clew.log.shredding import ShreddingLog

require_module("redis", "pip install -e '.[redis]'")

ADA, BOB = b"ada@example.test", b"bob@example.test"


def settings_for(
    tmp_path: Path, redis_url: str, bootstrap: str = "", **privacy: object
) -> Settings:
    return make_settings(
        tmp_path / "data",
        log=LogSettings(backend="kafka", bootstrap_servers=bootstrap, replication_factor=1),
        store=StoreSettings(
            backend="redis", redis_url=redis_url, redis_prefix=f"dur-{uuid.uuid4().hex[:8]}"
        ),
        privacy=PrivacySettings(master_key="k" * 64, **privacy),  # type: ignore[arg-type]
    )


def refusal(settings: Settings) -> str:
    with pytest.raises(KeyStoreError) as caught:
        open_keyring(settings)
    return str(caught.value)


def test_a_redis_without_an_append_only_file_is_refused(tmp_path: Path) -> None:
    with redis_server(tmp_path, appendonly=False) as redis:
        message = refusal(settings_for(tmp_path, redis.url))
    assert "\n" not in message
    assert "appendonly yes" in message and "privacy.key_store_persistence" in message


def test_clew_refuses_to_start_on_it_in_one_line_naming_the_setting(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    with redis_server(tmp_path, appendonly=False) as redis:
        env = {
            **os.environ,
            "CLEW_LOG__BACKEND": "kafka",
            "CLEW_LOG__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
            "CLEW_STORE__BACKEND": "redis",
            "CLEW_STORE__REDIS_URL": redis.url,
            "CLEW_PRIVACY__MASTER_KEY": "k" * 64,
        }
        argv = [clew_bin(), "collector", "--port", str(free_port())]
        done = subprocess.run(
            [*argv, "--data-dir", str(tmp_path / "data")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "appendonly yes" in done.stderr and "privacy.key_store_persistence" in done.stderr


def test_a_redis_that_forbids_config_is_refused_unless_persistence_is_assumed(
    tmp_path: Path,
) -> None:
    """A managed Redis often renames CONFIG away: Clew cannot check, so the operator says."""
    binary = shutil.which("redis-server") or "redis-server"
    conf = tmp_path / "redis.conf"
    conf.write_text('rename-command CONFIG ""\nappendonly yes\nsave ""\n')
    port = free_port()
    argv = [binary, str(conf), "--bind", LOOPBACK, "--port", str(port), "--dir", str(tmp_path)]
    ping = functools.partial(_answers, LOOPBACK, port, b"PING\r\n", b"+PONG")
    proc = start("redis-noconfig", argv, tmp_path, ping)
    try:
        url = f"redis://{LOOPBACK}:{port}"
        message = refusal(settings_for(tmp_path, url))
        assert "\n" not in message and 'privacy.key_store_persistence = "assumed"' in message
        open_keyring(settings_for(tmp_path, url, key_store_persistence="assumed")).close()
    finally:
        stop(proc)


def redis_argv(workdir: Path, port: int) -> list[str]:
    """A redis-server with an append-only file (``appendfsync everysec``, Redis's default)."""
    binary = shutil.which("redis-server") or "redis-server"
    argv = [binary, "--bind", LOOPBACK, "--port", str(port), "--dir", str(workdir)]
    return [*argv, "--save", "", "--appendonly", "yes", "--logfile", ""]


@contextmanager
def restartable_redis(workdir: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """Its port, and its processes so far (:func:`kill_and_restart` adds one); all stopped
    at the end."""
    port = free_port()
    ping = functools.partial(_answers, LOOPBACK, port, b"PING\r\n", b"+PONG")
    procs = [start("redis", redis_argv(workdir, port), workdir, ping)]
    try:
        yield port, procs
    finally:
        for proc in procs:
            stop(proc)


def kill_and_restart(workdir: Path, port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL (no save on shutdown) and a new process on the same append-only file."""
    os.kill(procs[-1].pid, signal.SIGKILL)
    procs[-1].wait()
    ping = functools.partial(_answers, LOOPBACK, port, b"PING\r\n", b"+PONG")
    procs.append(start("redis", redis_argv(workdir, port), workdir, ping))


def read_all(log: Log, topic: str, partitions: int) -> list[Record]:
    out: list[Record] = []
    for p in range(partitions):
        offset = 0
        while batch := log.read(topic, p, offset):
            out.extend(batch)
            offset = batch[-1].offset + 1
    return out


def test_acknowledged_records_stay_readable_and_shredded_ones_shredded_across_redis_restarts(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    keyed, single = f"dur-events-{uuid.uuid4().hex[:8]}", f"dur-raw-{uuid.uuid4().hex[:8]}"
    with restartable_redis(tmp_path) as (port, procs):
        url = f"redis://{LOOPBACK}:{port}"
        settings = settings_for(tmp_path, url, kafka_broker.bootstrap, key_cache_s=0)

        def open_sealed() -> ShreddingLog:
            """The log as a Clew process opens it (a new key ring: nothing cached)."""
            inner = KafkaLog(kafka_broker.bootstrap, replication_factor=1)
            return ShreddingLog(inner, open_keyring(settings), record_keyed=[single])

        writer = open_sealed()
        writer.create_topic(TopicSpec(keyed, 2))
        writer.create_topic(TopicSpec(single, 2))
        for i in range(50):
            who = ADA if i % 2 else BOB
            writer.append_sync(keyed, [Message(b'{"n": %d, "who": "%s"}' % (i, who), key=who)])
            writer.append_sync(single, [Message(b'{"request": %d}' % i)])
        writer.close()

        # Every record above was acknowledged, so its data key had been written to Redis.
        kill_and_restart(tmp_path, port, procs)
        reader = open_sealed()
        assert len(read_all(reader, keyed, 2)) == 50
        assert len(read_all(reader, single, 2)) == 50
        assert sum(reader.shredded.values()) == 0

        # Ada is shredded; a restart replays the destruction too, never her old key.
        assert reader.shred_keys([ADA]) == 1
        reader.close()
        kill_and_restart(tmp_path, port, procs)
        after = open_sealed()
        remaining = read_all(after, keyed, 2)
        assert len(remaining) == 25 and all(b"bob" in r.value for r in remaining)
        assert len(read_all(after, single, 2)) == 50
        after.close()


def test_on_a_redis_cluster_the_primary_holding_the_keys_is_checked(
    redis_cluster_service: ClusterService,
) -> None:
    from clew.store._redis_route import cluster_client

    prefix = f"dur-{uuid.uuid4().hex[:8]}"
    store = RedisKeyStore(
        prefix=prefix, client=cluster_client(redis_cluster_service.url, [])(), cluster=True
    )
    client = store._client
    primary = client.get_node_from_key(f"{{{prefix}}}:dk:check")
    try:
        store.require_persistence()
        client.config_set("appendonly", "no", target_nodes=primary)
        with pytest.raises(KeyStoreNotDurableError, match="appendonly no"):
            store.require_persistence()
    finally:
        client.config_set("appendonly", "yes", target_nodes=primary)
        store.close()
