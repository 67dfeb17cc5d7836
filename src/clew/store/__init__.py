"""The serving store: identity graph and profiles (contract in ``base``; SQLite and in-memory
backends)."""

from clew.store.base import (
    IdentityEdge,
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    Separation,
    StoreClosedError,
    StoredEvent,
    StoreError,
    Traits,
    TraitsMerge,
    TraitsUpdate,
    UnknownProfileError,
    keep_existing,
)
from clew.store.memory import MemoryProfileStore
from clew.store.sqlite import SQLiteProfileStore

__all__ = [
    "IdentityEdge",
    "MemoryProfileStore",
    "Profile",
    "ProfileStore",
    "Provenance",
    "Redirect",
    "SQLiteProfileStore",
    "Separation",
    "StoreClosedError",
    "StoreError",
    "StoredEvent",
    "Traits",
    "TraitsMerge",
    "TraitsUpdate",
    "UnknownProfileError",
    "keep_existing",
]
