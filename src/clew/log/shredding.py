"""Crypto-shredding: a log whose records can be made unreadable one person at a time, on a
backend that cannot delete single records (Kafka; docs/privacy.md, "Kafka").

:class:`ShreddingLog` wraps another log and keeps the contract (``clew.log.base``):

- ``append`` seals every record (``clew.log._shred_codec``): key, headers and value are
  encrypted with AES-256-GCM under a data key held by a :class:`DataKeySource`, outside the log.
  A keyed record of a person-keyed topic uses the data key of its key (one per identifier or
  profile id: every record of that key shares it); a keyless record, or any record of a
  topic named in ``record_keyed`` (their key is not a person, ``dlq`` is keyed by source),
  gets a data key of its own. The key the inner log stores is a keyed hash of the original
  (:meth:`DataKeySource.key_id`) plus two bytes chosen so that ``partition_for`` places it in the
  partition the original key would have: placement is the contract's, and no identifier is
  stored in clear.
- ``poll`` and ``read`` return records decrypted, with their original key and headers. A
  record whose data key was destroyed is *shredded*: it is skipped (its offset still counts
  for the consumer's position, so a stage commits past it) and counted in :attr:`shredded`.
  A sealed record that does not authenticate under a live key raises
  :class:`TamperedRecordError`. A value that is not sealed (written before encryption was
  turned on) passes through unchanged.
- ``delete_where`` shreds the matching records: a record's own data key is destroyed; a
  person's data key only when every record under it matches (else it raises
  :class:`ShredRefusedError` and destroys nothing). :meth:`shred_where` does the same but
  reports what it had to keep instead of refusing, and :meth:`shred_keys` destroys the data
  keys of record keys (identifiers, profile ids) outright.

Retention, offsets and groups are the inner log's. The key ring is consulted once per
``append``, ``commit`` or ``poll`` for all the keys it needs, and caches keys for a short time
(see :mod:`clew.keys`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future

from clew.log._queue import batches
from clew.log._shred_codec import (
    PERSON,
    RECORD,
    DataKey,
    Envelope,
    TamperedRecordError,
    envelope,
    open_sealed,
    seal,
)
from clew.log._shred_types import DataKeySource, ShredOutcome, ShredRefusedError
from clew.log.base import (
    Consumer,
    Log,
    LogClosedError,
    LogError,
    Message,
    Position,
    Record,
    TopicPartition,
    TopicSpec,
    UnknownTopicError,
    partition_for,
)

__all__ = [
    "DataKey",
    "DataKeySource",
    "ShredOutcome",
    "ShredRefusedError",
    "ShreddingConsumer",
    "ShreddingLog",
    "TamperedRecordError",
]

logger = logging.getLogger(__name__)

# A record's own data key outlives the record: Kafka drops a segment only once its newest
# record is past retention, and segments roll after up to a week by default.
_RECORD_KEY_GRACE_MS = 7 * 24 * 3600_000
_READ_PAGE = 2000
_MAX_CACHED_KEYS = 100_000

# Appends sealed together at most (each may hold many records).
_MAX_COALESCED = 256

_Append = tuple[str, Sequence[Message], Future[list[Position]]]


class ShreddingLog(Log):
    """``inner`` with every record sealed (module docstring). Closing it closes ``inner`` and,
    when ``owns_keys``, the key ring."""

    def __init__(
        self,
        inner: Log,
        keys: DataKeySource,
        *,
        record_keyed: Collection[str] = (),
        owns_keys: bool = True,
    ) -> None:
        self.inner = inner
        self.keys = keys
        self._record_keyed = frozenset(record_keyed)
        self._owns_keys = owns_keys
        self._partitions: dict[str, int] = {}
        self._retention: dict[str, int | None] = {}
        self._kafka_keys: dict[tuple[bytes, int], bytes] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._sealer: threading.Thread | None = None
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self.shredded: Counter[str] = Counter()

    @property
    def encrypts_per_person(self) -> bool:
        return True

    @property
    def shares_groups_across_processes(self) -> bool:
        return self.inner.shares_groups_across_processes

    # -- topics -------------------------------------------------------------------------

    def create_topic(self, spec: TopicSpec) -> None:
        self.inner.create_topic(spec)
        self._partitions[spec.name] = spec.partitions
        self._retention[spec.name] = spec.retention_ms

    def topics(self) -> dict[str, TopicSpec]:
        return self.inner.topics()

    def _partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            spec = self.inner.topics().get(topic)
            if spec is None:
                raise UnknownTopicError(topic)
            n = self._partitions[topic] = spec.partitions
        return n

    # -- sealing ------------------------------------------------------------------------

    def seal(self, topic: str, messages: Sequence[Message]) -> list[Message]:
        """``messages`` as the inner log stores them."""
        return self._seal_all([(topic, messages)])[0]

    def _seal_all(self, batches: Sequence[tuple[str, Sequence[Message]]]) -> list[list[Message]]:
        """Several appends sealed with one key-store call for their person keys and one per
        retention for their records' own keys."""
        wanted: set[bytes] = set()
        singles: Counter[int | None] = Counter()
        for topic, messages in batches:
            if not messages:
                continue
            self._partition_count(topic)
            by_person = topic not in self._record_keyed
            for m in messages:
                if m.key is not None and by_person:
                    wanted.add(m.key)
                else:
                    singles[self._record_key_ttl(topic)] += 1
        try:
            people = self.keys.person_keys(wanted) if wanted else {}
            own = {ttl: iter(self.keys.record_keys(n, ttl)) for ttl, n in singles.items()}
        except LogError:
            raise
        except Exception as exc:
            raise LogError(f"the data keys are unavailable: {exc}") from exc
        out = []
        for topic, messages in batches:
            sealed_batch = []
            by_person = topic not in self._record_keyed
            n = self._partitions.get(topic, 0)
            for m in messages:
                if m.key is not None and by_person:
                    sealed = seal(topic, PERSON, people[m.key], m)
                else:
                    sealed = seal(topic, RECORD, next(own[self._record_key_ttl(topic)]), m)
                key = None if m.key is None else self._stored_key(m.key, n)
                sealed_batch.append(Message(sealed, key=key, timestamp_ms=m.timestamp_ms))
            out.append(sealed_batch)
        return out

    def _record_key_ttl(self, topic: str) -> int | None:
        retention = self._retention.get(topic)
        return None if retention is None else retention + _RECORD_KEY_GRACE_MS

    def _stored_key(self, key: bytes, partitions: int) -> bytes:
        """The key's hash, extended so that it lands where ``key`` would."""
        found = self._kafka_keys.get((key, partitions))
        if found is not None:
            return found
        base = self.keys.key_id(key)[:16]
        target = partition_for(key, partitions)
        for c in range(1 << 16):
            stored = base + c.to_bytes(2, "big")
            if partition_for(stored, partitions) == target:
                break
        else:  # pragma: no cover - needs tens of thousands of partitions
            raise LogError(f"no stored key lands in partition {target} of {partitions}")
        if len(self._kafka_keys) >= _MAX_CACHED_KEYS:
            self._kafka_keys.clear()
        self._kafka_keys[(key, partitions)] = stored
        return stored

    def append(self, topic: str, messages: Sequence[Message]) -> Future[list[Position]]:
        """Sealed on this log's own thread, and returns at once: the collector appends from
        its event loop, which must not wait for the key store. The thread takes every append
        waiting when it wakes and seals them with one key-store call, then hands them to the
        inner log in the order they were made."""
        outer: Future[list[Position]] = Future()
        outer.set_running_or_notify_cancel()
        with self._lock:
            if self._closed:
                outer.set_exception(LogClosedError("the log is closed"))
                return outer
            if self._sealer is None:
                self._sealer = threading.Thread(
                    target=self._serve_appends, name="clew-seal", daemon=True
                )
                self._sealer.start()
            self._queue.put((topic, messages, outer))
        return outer

    def _serve_appends(self) -> None:
        for pending in batches(self._queue, _MAX_COALESCED):
            self._append_pending(pending)

    def _append_pending(self, pending: list[_Append]) -> None:
        try:
            sealed = self._seal_all([(topic, messages) for topic, messages, _ in pending])
        except Exception:
            # One append's failure (an unknown topic) must not fail the others: alone again.
            for topic, messages, outer in pending:
                try:
                    self._hand_on(topic, self.seal(topic, messages), outer)
                except Exception as exc:
                    outer.set_exception(exc)
            return
        for (topic, _, outer), records in zip(pending, sealed, strict=True):
            try:
                self._hand_on(topic, records, outer)
            except Exception as exc:
                outer.set_exception(exc)

    def _hand_on(self, topic: str, records: list[Message], outer: Future[list[Position]]) -> None:
        written = self.inner.append(topic, records)
        written.add_done_callback(lambda done: _pass_on(done, outer))

    # -- opening ------------------------------------------------------------------------

    def opened(
        self, records: Sequence[Record], *, fresh: bool = False
    ) -> list[tuple[Record, Envelope | None, Record | None]]:
        """Per record as stored: its envelope (``None`` when not sealed) and the record
        decrypted (``None`` when shredded; the record itself when not sealed)."""
        envs = [envelope(r.value) for r in records]
        refs = {e.ref for e in envs if e is not None}
        try:
            keys = self.keys.lookup(refs, fresh=fresh) if refs else {}
        except LogError:
            raise
        except Exception as exc:
            raise LogError(f"the data keys are unavailable: {exc}") from exc
        out: list[tuple[Record, Envelope | None, Record | None]] = []
        for r, env in zip(records, envs, strict=True):
            if env is None:
                out.append((r, None, r))
                continue
            key = keys.get(env.ref)
            if key is None:
                out.append((r, env, None))
                continue
            o = open_sealed(r.topic, env, r.value, key, (r.partition, r.offset))
            plain = Record(
                r.topic, r.partition, r.offset, o.key, o.value, o.headers, r.timestamp_ms
            )
            out.append((r, env, plain))
        return out

    def open_records(self, records: Sequence[Record]) -> list[Record]:
        """The readable records of ``records``, decrypted; shredded ones are counted."""
        out = []
        for stored, _, plain in self.opened(records):
            if plain is None:
                self.shredded[stored.topic] += 1
            else:
                out.append(plain)
        return out

    # -- reading ------------------------------------------------------------------------

    def consumer(self, group: str, topics: Sequence[str]) -> ShreddingConsumer:
        return ShreddingConsumer(self, self.inner.consumer(group, topics))

    def read(self, topic: str, partition: int, offset: int, max_records: int = 500) -> list[Record]:
        """Readable records from ``offset`` on; shredded ones are skipped, so the first
        record returned may be further on than ``offset``."""
        while batch := self.inner.read(topic, partition, offset, max_records):
            out = self.open_records(batch)
            if out:
                return out
            offset = batch[-1].offset + 1
        return []

    def end_offsets(self, topic: str) -> dict[int, int]:
        return self.inner.end_offsets(topic)

    def start_offsets(self, topic: str) -> dict[int, int]:
        return self.inner.start_offsets(topic)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        return self.inner.committed(group, topic)

    def enforce_retention(self, now_ms: int) -> int:
        return self.inner.enforce_retention(now_ms)

    # -- shredding ----------------------------------------------------------------------

    def stored_records(self, topic: str) -> Iterator[list[Record]]:
        """Every retained record of ``topic`` as the inner log stores it, page by page."""
        starts = self.inner.start_offsets(topic)
        for p in range(self._partition_count(topic)):
            offset = starts.get(p, 0)
            while batch := self.inner.read(topic, p, offset, _READ_PAGE):
                yield batch
                offset = batch[-1].offset + 1

    def _plan(
        self, topic: str, match: Callable[[Record], bool]
    ) -> tuple[set[bytes], int, int, int]:
        """(data keys to destroy, records they make unreadable, matching records kept because
        their person key also seals records that do not match, matching records not sealed)."""
        destroy: set[bytes] = set()
        removed = kept_clear = 0
        shares: dict[bytes, list[int]] = {}
        for batch in self.stored_records(topic):
            for _, env, plain in self.opened(batch, fresh=True):
                if plain is None:
                    continue
                hit = match(plain)
                if env is None:
                    kept_clear += hit
                elif env.kind == RECORD:
                    if hit:
                        destroy.add(env.key_id)
                        removed += 1
                else:
                    counts = shares.setdefault(env.key_id, [0, 0])
                    counts[0 if hit else 1] += 1
        kept_shared = 0
        for key_id, (hits, misses) in shares.items():
            if hits and not misses:
                destroy.add(key_id)
                removed += hits
            else:
                kept_shared += hits
        return destroy, removed, kept_shared, kept_clear

    def shred_where(self, topic: str, match: Callable[[Record], bool]) -> ShredOutcome:
        """Make the matching records of ``topic`` unreadable where a data key allows it."""
        destroy, removed, kept_shared, kept_clear = self._plan(topic, match)
        keys = self._destroy(destroy)
        return ShredOutcome(removed, keys, kept_shared, kept_clear)

    def delete_where(self, topic: str, match: Callable[[Record], bool]) -> int:
        """Shreds every matching record (they are no longer read; their bytes stay in the
        inner log, unreadable, until its retention drops them). Raises
        :class:`ShredRefusedError`, shredding nothing, when a matching record cannot be
        shredded alone: it shares its person's data key with records that do not match, or
        it was stored before encryption was on."""
        destroy, removed, kept_shared, kept_clear = self._plan(topic, match)
        if kept_shared or kept_clear:
            raise ShredRefusedError(
                f"{kept_shared + kept_clear} matching record(s) of {topic!r} cannot be made "
                f"unreadable alone ({kept_shared} share a data key with records that do not "
                f"match, {kept_clear} were stored unencrypted); nothing was shredded"
            )
        self._destroy(destroy)
        return removed

    def shred_keys(self, record_keys: Collection[bytes]) -> int:
        """Destroy the data keys of ``record_keys`` (a person's identifiers and profile ids):
        every record keyed by one of them, in every topic, becomes unreadable. Returns how
        many keys were live."""
        return self._destroy({self.keys.key_id(k) for k in record_keys})

    def _destroy(self, key_ids: set[bytes]) -> int:
        if not key_ids:
            return 0
        try:
            return self.keys.destroy(key_ids)
        except LogError:
            raise
        except Exception as exc:
            raise LogError(f"the data keys cannot be destroyed: {exc}") from exc

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Seals what was appended before, then closes the inner log (which finishes or
        refuses those appends)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sealer, self._sealer = self._sealer, None
            self._queue.put(None)
        if sealer is not None:
            sealer.join()
        try:
            self.inner.close()
        finally:
            if self._owns_keys:
                self.keys.close()


def _pass_on(done: Future[list[Position]], outer: Future[list[Position]]) -> None:
    error = done.exception()
    if error is None:
        outer.set_result(done.result())
    else:
        outer.set_exception(error)


class ShreddingConsumer(Consumer):
    """A group member of the inner log whose records come back decrypted; shredded records
    are skipped, their offsets committed with the rest."""

    def __init__(self, log: ShreddingLog, inner: Consumer) -> None:
        self._log = log
        self.inner = inner
        # Records this member skipped because their data key was destroyed.
        self.shredded = 0

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        stored = self.inner.poll(max_records, timeout_s)
        readable = self._log.open_records(stored)
        self.shredded += len(stored) - len(readable)
        return readable

    def commit(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        produce: Mapping[str, Sequence[Message]] | None = None,
    ) -> None:
        sealed = None
        if produce:
            sealed = {topic: self._log.seal(topic, ms) for topic, ms in produce.items() if ms}
        self.inner.commit(offsets, sealed)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.inner.seek(topic, partition, offset)

    def assignment(self) -> list[TopicPartition]:
        return self.inner.assignment()

    def close(self) -> None:
        self.inner.close()
