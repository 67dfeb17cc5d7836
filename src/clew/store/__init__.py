"""The serving store: identity graph and profiles (contract in ``base``, SQLite backend)."""

from clew.store.base import (
    IdentityEdge,
    Profile,
    ProfileStore,
    Provenance,
    Redirect,
    StoreClosedError,
    StoreError,
    Traits,
    TraitsMerge,
    TraitsUpdate,
    UnknownProfileError,
    keep_existing,
)
from clew.store.sqlite import SQLiteProfileStore

__all__ = [
    "IdentityEdge",
    "Profile",
    "ProfileStore",
    "Provenance",
    "Redirect",
    "SQLiteProfileStore",
    "StoreClosedError",
    "StoreError",
    "Traits",
    "TraitsMerge",
    "TraitsUpdate",
    "UnknownProfileError",
    "keep_existing",
]
