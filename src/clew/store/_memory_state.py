"""The state of the in-memory serving store (``clew.store.memory``): its profiles with the
caches their snapshots reuse, and everything else one store holds. A transaction copies it
whole."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from clew.store.base import IdentityEdge, Provenance, Redirect, Separation, StoredEvent, Traits

IdentityKey = tuple[str, str]


@dataclass(slots=True)
class ProfileRecord:
    first_ms: int
    last_ms: int
    traits: Traits = field(default_factory=dict)
    computed: Traits = field(default_factory=dict)
    ids: set[IdentityKey] = field(default_factory=set)
    history: deque[StoredEvent] = field(default_factory=deque)
    # ``ids`` as identity edges sorted by (id_type, value); None when ``ids`` changed since.
    edges: tuple[IdentityEdge, ...] | None = None
    # The redirects leading to the profile, oldest first; None when they changed since.
    merged: tuple[Redirect, ...] | None = None


@dataclass(slots=True)
class StoreState:
    profiles: dict[str, ProfileRecord] = field(default_factory=dict)
    identities: dict[IdentityKey, tuple[str, Provenance]] = field(default_factory=dict)
    redirects: dict[str, tuple[str, Provenance]] = field(default_factory=dict)
    redirects_into: dict[str, list[str]] = field(default_factory=dict)
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    separations: dict[tuple[IdentityKey, IdentityKey], Separation] = field(default_factory=dict)
    seq: int = 0
    timers: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, dict[int, bytes]] = field(default_factory=dict)
    outbox_seq: dict[str, int] = field(default_factory=dict)
    version: int = 0  # bumped by every write to profiles
