"""The serving store: identity graph and profiles (contract in ``base``: one protocol per
concern, ``ProfileStore`` their combination; SQLite and in-memory backends, and Redis in
``redis``, which needs ``pip install 'clew[redis]'``: it is imported only when first named,
so importing this package never imports the Redis driver).
:func:`clew.backends.open_store` opens the backend the settings choose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clew.store.base import (
    BulkStore,
    GraphStore,
    HistoryStore,
    IdentityEdge,
    OffsetStore,
    OutboxStore,
    Profile,
    ProfileReader,
    ProfileStore,
    Provenance,
    Redirect,
    Separation,
    SeparationStore,
    StoreClosedError,
    StoreConflictError,
    StoredEvent,
    StoreError,
    TimerStore,
    Traits,
    TraitsMerge,
    TraitStore,
    TraitsUpdate,
    UnknownProfileError,
    keep_existing,
)
from clew.store.memory import MemoryProfileStore
from clew.store.sqlite import SQLiteProfileStore

if TYPE_CHECKING:
    from clew.store.redis import RedisConflictError, RedisProfileStore, RedisUnavailableError

_REDIS = ("RedisConflictError", "RedisProfileStore", "RedisUnavailableError")

__all__ = [
    "BulkStore",
    "GraphStore",
    "HistoryStore",
    "IdentityEdge",
    "MemoryProfileStore",
    "OffsetStore",
    "OutboxStore",
    "Profile",
    "ProfileReader",
    "ProfileStore",
    "Provenance",
    "Redirect",
    "RedisConflictError",
    "RedisProfileStore",
    "RedisUnavailableError",
    "SQLiteProfileStore",
    "Separation",
    "SeparationStore",
    "StoreClosedError",
    "StoreConflictError",
    "StoreError",
    "StoredEvent",
    "TimerStore",
    "TraitStore",
    "Traits",
    "TraitsMerge",
    "TraitsUpdate",
    "UnknownProfileError",
    "keep_existing",
]


def __getattr__(name: str) -> Any:
    if name in _REDIS:
        from clew.store import redis

        return getattr(redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
