"""Data keys for crypto-shredding the Kafka log (docs/privacy.md, "Kafka"). Opened by
:func:`clew.backends.open_keyring`.

A :class:`KeyRing` hands the shredding log (``clew.log.shredding``) its data keys: one per
record key (a person's identifier or profile id, shared by all their records) or one per
record. Data keys are random AES-256 keys, stored outside the log in a :class:`KeyStore` (the
serving store's Redis, or ``keys.db`` in the data directory) *wrapped*: encrypted with a key
derived from the master secret, so a copy of the key store alone opens nothing.

The master secret is ``privacy.master_key`` when set, else the privacy salt
(``clew.keys.salt``). Two keys are derived from it with HKDF: one wraps data keys, one
hashes record keys into key ids (so the key store holds no identifier either). Every process
must use the same secret: the key store keeps a check value of it, and a process whose secret
differs refuses to start rather than write records nobody else can read.

Destroying a data key keeps its generation (a number, no key material); a key created later
for the same record key gets the next generation, so records sealed before stay unreadable.

Each process caches data keys (and the fact that one is destroyed) for ``privacy.key_cache_s``
seconds, so the collector and the stages ask the store once per key and interval, not per
record. A key destroyed elsewhere is therefore usable by a process that cached it for at most
that long; :meth:`KeyRing.settle` waits that long after a destruction.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clew.keys.salt import load_salt
from clew.log.shredding import DataKey

if TYPE_CHECKING:
    from clew.config import Settings

__all__ = [
    "KeyRing",
    "KeyStore",
    "KeyStoreError",
    "StoredKey",
    "master_secret",
]

_WRAP_INFO = b"clew data key wrapping"
_ID_INFO = b"clew record key ids"
_CHECK = b"clew master key check"
_MAX_CACHED = 200_000
_RECORD_ID_BYTES = 16


class KeyStoreError(RuntimeError):
    """The key store cannot be used; the message says what to do."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A data key as stored: its generation, and the wrapped key (``None`` once destroyed)."""

    generation: int
    wrapped: bytes | None


class KeyStore(ABC):
    """Where wrapped data keys live, by key id. Thread-safe; several processes share one."""

    @abstractmethod
    def get(self, key_ids: Collection[bytes]) -> dict[bytes, StoredKey]:
        """The stored keys of ``key_ids`` (absent: never made, or expired)."""

    @abstractmethod
    def get_or_create(self, candidates: Mapping[bytes, bytes]) -> dict[bytes, StoredKey]:
        """Per key id, the live key; where there is none, the candidate (a wrapped key) is
        stored as it, atomically, with the generation after the destroyed one's."""

    @abstractmethod
    def put(self, entries: Mapping[bytes, bytes], ttl_ms: int | None) -> None:
        """Store new keys (fresh random ids, generation 1), forgotten after ``ttl_ms``."""

    @abstractmethod
    def destroy(self, key_ids: Collection[bytes]) -> int:
        """Drop the key material of ``key_ids`` (their generation stays) so that no byte of
        it is left in the store's files; how many were live."""

    @abstractmethod
    def check(self, value: bytes) -> bytes:
        """The master secret's check value: ``value`` stored if none is, else the stored one."""

    @abstractmethod
    def close(self) -> None: ...


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(master)


class KeyRing:
    """Data keys wrapped by ``master`` in ``store``, cached for ``cache_s`` seconds
    (module docstring). Implements :class:`clew.log.shredding.KeyRing`. Raises
    :class:`KeyStoreError` when ``master`` is not the one the store's keys were made with."""

    def __init__(
        self,
        store: KeyStore,
        master: bytes,
        *,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        owns_store: bool = True,
    ) -> None:
        self.store = store
        self.cache_s = cache_s
        self._clock = clock
        self._owns_store = owns_store
        self._wrap = AESGCM(_derive(master, _WRAP_INFO))
        self._ids = _derive(master, _ID_INFO)
        # Per key id: (generation, the key or None when destroyed, when the entry expires).
        self._cache: dict[bytes, tuple[int, DataKey | None, float]] = {}
        self._lock = threading.Lock()
        self.destroyed_at: float | None = None
        mine = hmac.digest(self._ids, _CHECK, "sha256")
        if not hmac.compare_digest(store.check(mine), mine):
            raise KeyStoreError(
                "the data keys in this key store were made with another master secret: set "
                "privacy.master_key (or privacy.salt) to the same value on every Clew process"
            )

    def key_id(self, record_key: bytes) -> bytes:
        return hmac.digest(self._ids, record_key, "sha256")

    # -- wrapping -----------------------------------------------------------------------

    def _wrapped(self, key_id: bytes, material: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._wrap.encrypt(nonce, material, key_id)

    def _unwrap(self, key_id: bytes, stored: StoredKey) -> DataKey | None:
        if stored.wrapped is None:
            return None
        try:
            material = self._wrap.decrypt(stored.wrapped[:12], stored.wrapped[12:], key_id)
        except InvalidTag:
            raise KeyStoreError(
                f"data key {key_id.hex()[:16]}… does not unwrap: it was altered in the key store"
            ) from None
        return DataKey(key_id, stored.generation, AESGCM(material))

    # -- the log's calls ----------------------------------------------------------------

    def person_keys(self, record_keys: Collection[bytes]) -> dict[bytes, DataKey]:
        ids = {rk: self.key_id(rk) for rk in record_keys}
        now = self._clock()
        found: dict[bytes, DataKey] = {}
        with self._lock:
            for kid in ids.values():
                entry = self._cache.get(kid)
                if entry is not None and entry[1] is not None and entry[2] > now:
                    found[kid] = entry[1]
        missing = {kid for kid in ids.values() if kid not in found}
        if missing:
            candidates = {kid: self._wrapped(kid, AESGCM.generate_key(256)) for kid in missing}
            for kid, stored in self.store.get_or_create(candidates).items():
                key = self._unwrap(kid, stored)
                if key is None:
                    raise KeyStoreError(f"the key store returned no live key for {kid.hex()}")
                found[kid] = key
            self._remember({kid: found[kid] for kid in missing})
        return {rk: found[kid] for rk, kid in ids.items()}

    def record_keys(self, n: int, ttl_ms: int | None) -> list[DataKey]:
        material = {os.urandom(_RECORD_ID_BYTES): AESGCM.generate_key(256) for _ in range(n)}
        self.store.put({kid: self._wrapped(kid, m) for kid, m in material.items()}, ttl_ms)
        return [DataKey(kid, 1, AESGCM(m)) for kid, m in material.items()]

    def lookup(
        self, refs: Collection[tuple[bytes, int]], *, fresh: bool = False
    ) -> dict[tuple[bytes, int], DataKey]:
        now = self._clock()
        known: dict[bytes, tuple[int, DataKey | None]] = {}
        if not fresh:
            with self._lock:
                for kid, _ in refs:
                    entry = self._cache.get(kid)
                    if entry is not None and entry[2] > now:
                        known[kid] = (entry[0], entry[1])
        wanted = {kid for kid, _ in refs if kid not in known}
        if wanted:
            stored = self.store.get(wanted)
            fetched: dict[bytes, DataKey | None] = {}
            for kid in wanted:
                s = stored.get(kid)
                key = None if s is None else self._unwrap(kid, s)
                known[kid] = (0 if s is None else s.generation, key)
                fetched[kid] = key
            # Record keys are read once per group: only person keys are worth keeping.
            self._remember({k: v for k, v in fetched.items() if len(k) != _RECORD_ID_BYTES})
        out = {}
        for kid, generation in refs:
            g, key = known[kid]
            if key is not None and g == generation:
                out[(kid, generation)] = key
        return out

    def _remember(self, keys: Mapping[bytes, DataKey | None]) -> None:
        if not keys or self.cache_s <= 0:
            return
        until = self._clock() + self.cache_s
        with self._lock:
            if len(self._cache) + len(keys) > _MAX_CACHED:
                self._cache.clear()
            for kid, key in keys.items():
                self._cache[kid] = (0 if key is None else key.generation, key, until)

    def destroy(self, key_ids: Collection[bytes]) -> int:
        with self._lock:
            for kid in key_ids:
                self._cache.pop(kid, None)
        n = self.store.destroy(key_ids)
        self.destroyed_at = self._clock()
        return n

    def settle(self) -> float:
        """Wait until every other process's cache has dropped the keys destroyed through
        this ring (``cache_s`` after the last destruction); the seconds waited."""
        if self.destroyed_at is None:
            return 0.0
        wait = self.destroyed_at + self.cache_s - self._clock()
        if wait > 0:
            time.sleep(wait)
        return max(wait, 0.0)

    def close(self) -> None:
        if self._owns_store:
            self.store.close()


def master_secret(settings: Settings) -> bytes:
    """``privacy.master_key`` (64 hex digits are read as 32 bytes), else the privacy salt."""
    configured = settings.privacy.master_key.get_secret_value()
    if configured:
        try:
            return bytes.fromhex(configured) if len(configured) == 64 else configured.encode()
        except ValueError:
            return configured.encode()
    return load_salt(settings)
