"""The serving-store contract (DESIGN.md §3): the identity graph and profiles that identity
resolution reads and writes on every event.

Per profile id the store holds identities with their provenance, a JSON-able traits dict, and
first/last seen times; an identity index maps ``(id_type, value)`` to the owning profile; and
redirects map merged-away profile ids to the profile they were merged into.

Guarantees every backend gives:

- Each operation is atomic: concurrent callers (threads or processes) never see half of an
  ``attach``, ``update_traits``, ``merge`` or ``delete_profile``, and never lose a write.
- An identity belongs to at most one profile. ``attach`` is the atomic claim that enforces
  this, so two workers racing to create a profile for the same new identity end with one owner.
- Every method that takes a profile id accepts an old, merged-away id and acts on the profile
  it resolves to; methods that return a profile id return the surviving one.
- A write is durable when the method returns (it survives a crash of the calling process;
  surviving power loss depends on the backend's configuration).

Key layout for a Redis Cluster backend: everything of one profile (identities, traits, seen
times, redirects pointing to it) lives under the hash tag ``{p:<profile_id>}``, and each
index entry under ``{i:<id_type>:<value>}``. Single-profile operations are then single-slot;
``merge`` and ``delete_profile`` span slots and must be made atomic by the backend (e.g. a
Lua script per slot applied in an order whose intermediate states still resolve correctly).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Traits = dict[str, Any]
TraitsUpdate = Callable[[Traits], Traits]
TraitsMerge = Callable[[Traits, Traits], Traits]


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message says why."""


class UnknownProfileError(StoreError):
    def __init__(self, profile_id: str) -> None:
        super().__init__(
            f"profile {profile_id!r} does not exist (never created, or deleted); "
            "create it with ProfileStore.touch or ProfileStore.attach first"
        )
        self.profile_id = profile_id


class StoreClosedError(StoreError):
    """The store was closed; open a new one to keep using its data."""


@dataclass(slots=True, frozen=True)
class Provenance:
    """The event that caused a change: its ``messageId``, source, and event time (ms)."""

    message_id: str
    source_id: str
    time_ms: int


@dataclass(slots=True, frozen=True)
class IdentityEdge:
    """An identifier of a profile and the event that attached it."""

    id_type: str
    value: str
    provenance: Provenance


@dataclass(slots=True, frozen=True)
class Redirect:
    """``from_id`` was merged into ``into_id`` by the event in ``provenance``."""

    from_id: str
    into_id: str
    provenance: Provenance


@dataclass(slots=True, frozen=True)
class Profile:
    """A snapshot of one surviving profile.

    ``identities`` is sorted by (id_type, value); ``merged`` lists every redirect that leads
    (directly or through a chain) to this profile, oldest first."""

    profile_id: str
    first_seen_ms: int
    last_seen_ms: int
    identities: tuple[IdentityEdge, ...] = ()
    traits: Traits = field(default_factory=dict)
    merged: tuple[Redirect, ...] = ()


def keep_existing(into: Traits, from_: Traits) -> Traits:
    """The default trait merge: the surviving profile's fields win, the other fills gaps."""
    return {**from_, **into}


class ProfileStore(ABC):
    """Profiles, their identities and the identity index. Safe to use from several threads."""

    @abstractmethod
    def touch(self, profile_id: str, time_ms: int) -> str:
        """Widen the profile's first/last seen to include ``time_ms``, creating the profile
        (no identities, empty traits) if ``profile_id`` does not resolve. Returns the
        surviving id."""

    @abstractmethod
    def attach(self, profile_id: str, id_type: str, value: str, provenance: Provenance) -> str:
        """Claim the identity for the profile (created if ``profile_id`` does not resolve) and
        widen its seen times by ``provenance.time_ms``. Returns the identity's owner after
        the call: the surviving id of ``profile_id`` when the claim succeeded or the identity
        was already its own (its first provenance is kept), or another profile's id, in which
        case nothing changed and the caller decides whether to merge."""

    @abstractmethod
    def detach(self, id_type: str, value: str) -> str | None:
        """Remove the identity and its index entry; returns the profile it belonged to, or
        ``None`` if it was not known. The profile itself stays, even if now without ids."""

    @abstractmethod
    def lookup(self, id_type: str, value: str) -> str | None:
        """The surviving profile id that owns the identity, or ``None``."""

    @abstractmethod
    def resolve(self, profile_id: str) -> str | None:
        """The surviving profile id, following redirects through any chain of merges; the id
        itself for a live profile; ``None`` for an unknown or deleted id."""

    @abstractmethod
    def get(self, profile_id: str) -> Profile | None:
        """A consistent snapshot of the profile ``profile_id`` resolves to, or ``None``."""

    @abstractmethod
    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        """Atomically replace the profile's traits by ``update(current)`` and return them.

        ``update`` must be a pure, quick function of its argument and must not call the
        store: a backend may call it more than once (optimistic retry) or while holding a
        lock. If it raises, nothing changes and the exception propagates. Raises
        :class:`UnknownProfileError` if ``profile_id`` does not resolve."""

    @abstractmethod
    def merge(
        self,
        into: str,
        from_: str,
        provenance: Provenance,
        traits: TraitsMerge = keep_existing,
    ) -> str:
        """Merge the profile ``from_`` resolves to into the one ``into`` resolves to, in one
        atomic step: identities (with their provenance) and index entries move, traits become
        ``traits(into_traits, from_traits)`` (same rules as ``update_traits``' function), seen
        times widen, and a redirect from the merged-away id to the survivor records
        ``provenance``. Afterwards
        ``from_`` and every id that resolved to it resolve to the survivor. Returns the
        surviving id; merging a profile with itself changes nothing. Raises
        :class:`UnknownProfileError` if either id does not resolve."""

    @abstractmethod
    def delete_profile(self, profile_id: str) -> bool:
        """Remove every trace of the profile ``profile_id`` resolves to: identities, index
        entries, traits, seen times and every redirect leading to it, so that no old id
        resolves any more. Returns whether there was anything to delete."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; later calls raise :class:`StoreClosedError`. Safe to call
        twice."""
