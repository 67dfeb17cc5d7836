"""What a :class:`~clew.log.shredding.ShreddingLog` needs of its key ring, and what shredding
reports."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from clew.log._shred_codec import DataKey
from clew.log.base import LogError

KeyRef = tuple[bytes, int]


class DataKeySource(Protocol):
    """Where the data keys live (``clew.keys.KeyRing`` implements it). Its methods raise an
    exception of its own when the key store cannot be reached; the log turns it into a
    :class:`LogError`."""

    def key_id(self, record_key: bytes) -> bytes:
        """The keyed hash naming the data key of ``record_key``; equal in every process."""
        ...

    def person_keys(self, record_keys: Collection[bytes]) -> Mapping[bytes, DataKey]:
        """The live data key of each record key, created where there is none."""
        ...

    def record_keys(self, n: int, ttl_ms: int | None) -> list[DataKey]:
        """``n`` new data keys of one record each, forgotten after ``ttl_ms``."""
        ...

    def lookup(self, refs: Collection[KeyRef], *, fresh: bool = False) -> Mapping[KeyRef, DataKey]:
        """The data keys of ``refs`` (id, generation) that are live; a missing one is
        destroyed. ``fresh`` bypasses the cache."""
        ...

    def destroy(self, key_ids: Collection[bytes]) -> int:
        """Destroy the data keys; how many were live."""
        ...

    def settle(self) -> float:
        """Wait until no process can still use a key destroyed through this ring (their
        caches expired); the seconds waited."""
        ...

    def close(self) -> None: ...


class ShredRefusedError(LogError):
    """``delete_where`` matched some records of a person's data key but not all of them: a
    data key cannot make only some of its records unreadable."""


@dataclass(frozen=True, slots=True)
class ShredOutcome:
    """What :meth:`ShreddingLog.shred_where` did: records made unreadable, data keys
    destroyed, and matching records kept (with why)."""

    removed: int
    keys: int
    kept_shared: int
    kept_clear: int
