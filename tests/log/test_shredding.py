"""The shredding log on a real Kafka broker with its data keys in a real Redis (and, for the
key store alone, in SQLite): records round-trip, Kafka holds no identifier in clear, an altered
record is refused, and a destroyed key makes its records disappear for every reader while the
group's position moves past them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _kafka import KafkaBroker
from _services import require_module
from clew.keys import KeyRing, KeyStore, KeyStoreError
from clew.keys._redis import RedisKeyStore
from clew.keys._sqlite import SqliteKeyStore
from clew.log.base import Log, Message, Record, TopicSpec, partition_for
from clew.log.kafka import KafkaLog
from clew.log.shredding import ShreddingLog, ShredRefusedError, TamperedRecordError

require_module("redis", "pip install -e '.[redis]'")

ADA = b"ada@example.test"
BOB = b"bob@example.test"
MASTER = b"m" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OpenRing = Callable[..., KeyRing]


@pytest.fixture
def open_ring(redis_url: str) -> Iterator[OpenRing]:
    """Key rings on one fresh Redis prefix (each ring stands for one process)."""
    prefix = f"shred-{uuid.uuid4().hex[:8]}"
    rings: list[KeyRing] = []

    def open_(master: bytes = MASTER, **kwargs: object) -> KeyRing:
        ring = KeyRing(RedisKeyStore(redis_url, prefix=prefix), master, **kwargs)  # type: ignore[arg-type]
        rings.append(ring)
        return ring

    yield open_
    for ring in rings:
        ring.close()


@pytest.fixture
def kafka(kafka_broker: KafkaBroker) -> Iterator[KafkaLog]:
    log = KafkaLog(kafka_broker.bootstrap, replication_factor=1)
    yield log
    log.close()


@pytest.fixture
def topic(kafka: KafkaLog) -> str:
    name = f"shred-{uuid.uuid4().hex[:12]}"
    kafka.create_topic(TopicSpec(name, 4))
    return name


Shredding = Callable[[KafkaLog, KeyRing], ShreddingLog]


@pytest.fixture
def shredding(kafka_broker: KafkaBroker) -> Iterator[Shredding]:
    """Shredding logs, each on a Kafka handle of its own (as each process has), sharing the
    fixture's broker; all closed after the test."""
    logs: list[ShreddingLog] = []

    def open_(_: KafkaLog, ring: KeyRing) -> ShreddingLog:
        inner = KafkaLog(kafka_broker.bootstrap, replication_factor=1)
        log = ShreddingLog(inner, ring, owns_keys=False)
        logs.append(log)
        return log

    yield open_
    for log in logs:
        log.close()


def read_all(log: Log, topic: str) -> list[Record]:
    out: list[Record] = []
    for p in range(4):
        offset = 0
        while batch := log.read(topic, p, offset):
            out.extend(batch)
            offset = batch[-1].offset + 1
    return out


def person(who: bytes, i: int) -> Message:
    return Message(
        b'{"userId": "%s", "n": %d}' % (who, i),
        key=who,
        headers=(("email", who), ("n", b"%d" % i)),
        timestamp_ms=1_700_000_000_000 + i,
    )


def test_records_round_trip_in_the_partition_of_their_key(
    kafka: KafkaLog, topic: str, open_ring: OpenRing, shredding: Shredding
) -> None:
    log = shredding(kafka, open_ring())
    sent = [person(ADA, i) for i in range(3)] + [person(BOB, 0), Message(b"keyless " + ADA)]
    positions = log.append_sync(topic, sent)

    got = {(r.partition, r.offset): r for r in read_all(log, topic)}
    for m, pos in zip(sent, positions, strict=True):
        r = got[(pos.partition, pos.offset)]
        assert (r.key, r.value, r.headers, r.timestamp_ms) == (
            m.key,
            m.value,
            m.headers,
            m.timestamp_ms or r.timestamp_ms,
        )
        if m.key is not None:
            assert pos.partition == partition_for(m.key, 4)


def test_kafka_holds_no_identifier_in_clear(
    kafka: KafkaLog, topic: str, open_ring: OpenRing, shredding: Shredding
) -> None:
    log = shredding(kafka, open_ring())
    log.append_sync(topic, [person(ADA, 0), person(BOB, 1), Message(b"keyless " + ADA)])

    stored = read_all(kafka, topic)
    assert len(stored) == 3
    for r in stored:
        blob = b"".join([r.key or b"", r.value, *(n.encode() + v for n, v in r.headers)])
        assert ADA not in blob and BOB not in blob and b"userId" not in blob
        assert r.headers == ()
    # The stored key is the same for every record of a person (and differs between people).
    keys = {r.key for r in stored if r.key is not None}
    assert len(keys) == 2


def test_an_altered_record_is_refused(
    kafka: KafkaLog, topic: str, open_ring: OpenRing, shredding: Shredding
) -> None:
    log = shredding(kafka, open_ring())
    log.append_sync(topic, [person(ADA, 0)])
    (stored,) = read_all(kafka, topic)
    altered = bytearray(stored.value)
    altered[-1] ^= 1
    kafka.append_sync(topic, [Message(bytes(altered), key=stored.key)])

    with pytest.raises(TamperedRecordError, match="does not authenticate"):
        read_all(log, topic)


def test_a_destroyed_key_shreds_its_records_for_every_reader(
    kafka: KafkaLog, topic: str, open_ring: OpenRing, shredding: Shredding
) -> None:
    writer = shredding(kafka, open_ring())
    writer.append_sync(topic, [person(who, i) for i in range(5) for who in (ADA, BOB)])
    reader = shredding(kafka, open_ring())
    assert len(read_all(reader, topic)) == 10  # the reader's cache now holds Ada's key

    assert writer.shred_keys([ADA]) == 1
    assert writer.shred_keys([ADA]) == 0

    group = f"g-{uuid.uuid4().hex[:8]}"
    fresh = shredding(kafka, open_ring())
    consumer = fresh.consumer(group, [topic])
    try:
        got: list[Record] = []
        for _ in range(40):
            got += consumer.poll(100, 0.25)
            if len(got) >= 5 and fresh.shredded[topic] >= 5:
                break
        consumer.commit()
        assert sorted(r.value for r in got) == sorted(person(BOB, i).value for i in range(5))
        assert fresh.shredded[topic] == 5
        assert consumer.shredded == 5, "counted per member, for the stage's metrics"
        # The group's position moved past the shredded records too.
        assert kafka.lag(group, topic).total == 0
    finally:
        consumer.close()
    assert [r.key for r in read_all(fresh, topic)] == [BOB] * 5


def test_a_key_made_after_destruction_leaves_old_records_shredded(
    kafka: KafkaLog, topic: str, open_ring: OpenRing, shredding: Shredding
) -> None:
    log = shredding(kafka, open_ring())
    log.append_sync(topic, [person(ADA, 0)])
    log.shred_keys([ADA])
    log.append_sync(topic, [person(ADA, 1)])

    assert [r.value for r in read_all(log, topic)] == [person(ADA, 1).value]


def test_a_cached_key_stays_usable_for_at_most_the_cache_time(
    kafka: KafkaLog, topic: str, open_ring: OpenRing, shredding: Shredding
) -> None:
    clock = Clock()
    other_process = shredding(kafka, open_ring(cache_s=5.0, clock=clock))
    eraser = shredding(kafka, open_ring())
    eraser.append_sync(topic, [person(ADA, 0)])
    assert len(read_all(other_process, topic)) == 1

    eraser.shred_keys([ADA])
    clock.now += 4.9
    assert len(read_all(other_process, topic)) == 1
    clock.now += 0.2
    assert read_all(other_process, topic) == []


def test_delete_where_shreds_single_records_and_refuses_a_shared_key(
    kafka: KafkaLog, topic: str, open_ring: OpenRing, shredding: Shredding
) -> None:
    log = shredding(kafka, open_ring())
    log.append_sync(topic, [Message(b"raw " + who) for who in (ADA, BOB)])
    log.append_sync(topic, [person(ADA, 0), person(ADA, 1)])

    with pytest.raises(ShredRefusedError, match="share a data key"):
        log.delete_where(topic, lambda r: r.value.endswith(b"0}"))
    assert len(read_all(log, topic)) == 4

    assert log.delete_where(topic, lambda r: ADA in r.value) == 3
    assert [r.value for r in read_all(log, topic)] == [b"raw " + BOB]


def test_another_master_secret_is_refused(open_ring: OpenRing) -> None:
    open_ring()
    with pytest.raises(KeyStoreError, match="another master secret"):
        open_ring(master=b"x" * 32)


@pytest.fixture(params=["redis", "redis-cluster", "sqlite"])
def keystore(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    store: KeyStore
    prefix = f"ks-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        store = RedisKeyStore(request.getfixturevalue("redis_url"), prefix=prefix)
    elif request.param == "redis-cluster":
        from clew.store._redis_route import cluster_client

        url = request.getfixturevalue("redis_cluster_service").url
        store = RedisKeyStore(prefix=prefix, client=cluster_client(url, [])(), cluster=True)
    else:
        store = SqliteKeyStore(tmp_path / "keys.db")
    yield store
    store.close()


def test_key_store_creates_once_and_destroys_with_generations(keystore: KeyStore) -> None:
    a, b = b"a" * 32, b"b" * 32
    first = keystore.get_or_create({a: b"wrapped-1", b: b"wrapped-b"})
    assert first[a].generation == 1 and first[a].wrapped == b"wrapped-1"
    # Another process racing to create gets the stored key, not its own candidate.
    assert keystore.get_or_create({a: b"wrapped-2"})[a].wrapped == b"wrapped-1"

    assert keystore.destroy([a, b"c" * 32]) == 1
    assert keystore.get([a]) == {a: type(first[a])(1, None)}
    again = keystore.get_or_create({a: b"wrapped-3"})[a]
    assert (again.generation, again.wrapped) == (2, b"wrapped-3")

    # The first process's master check value stays; a later one is told what it is.
    assert keystore.check(b"check-1") == b"check-1"
    assert keystore.check(b"check-2") == b"check-1"

    keystore.put({b"r" * 16: b"single"}, ttl_ms=60_000)
    assert keystore.get([b"r" * 16])[b"r" * 16].wrapped == b"single"


def test_sqlite_key_store_leaves_no_destroyed_material_in_its_files(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.db")
    secret = b"WRAPPED-KEY-MATERIAL-0123456789"
    store.get_or_create({b"a" * 32: secret})
    store.destroy([b"a" * 32])
    store.close()
    for path in tmp_path.iterdir():
        assert secret not in path.read_bytes(), path.name
