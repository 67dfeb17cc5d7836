"""The serving-store contract: the identity graph and profiles that identity
resolution reads and writes on every event.

Per profile id the store holds identities with their provenance, a JSON-able traits dict, and
first/last seen times; an identity index maps ``(id_type, value)`` to the owning profile; and
redirects map merged-away profile ids to the profile they were merged into. Beside the
profiles, the stages keep a timer per profile id and an outbox of messages per group in it, so
that both commit together with the writes that made them.

The contract is one protocol per concern: :class:`ProfileReader` and :class:`GraphStore` (the
identity graph), :class:`TraitStore`, :class:`HistoryStore`, :class:`BulkStore` (whole
profiles, a batch's working set), :class:`SeparationStore`, :class:`TimerStore`,
:class:`OutboxStore` and :class:`OffsetStore`. :class:`ProfileStore` combines them with
transactions, ``close`` and the capabilities; every backend subclasses it, and a caller that
needs one concern only may be typed by that concern's protocol.

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

from abc import abstractmethod
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

Traits = dict[str, Any]
TraitsUpdate = Callable[[Traits], Traits]
TraitsMerge = Callable[[Traits, Traits], Traits]


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message says why."""


class StoreConflictError(StoreError):
    """Another writer changed what a transaction read before it committed, so none of it
    was written. Expected where several writers share one store (two profiles workers on one
    Redis): the caller runs the work again, and nothing is wrong with it or its data."""


class UnknownProfileError(StoreError):
    def __init__(self, profile_id: str) -> None:
        super().__init__(
            f"profile {profile_id!r} does not exist (never created, or deleted); "
            "create it with ProfileStore.touch or ProfileStore.attach first"
        )
        self.profile_id = profile_id


class StoreClosedError(StoreError):
    """The store was closed; open a new one to keep using its data."""


class Provenance(msgspec.Struct, frozen=True, gc=False):
    """The event that caused a change: its ``messageId``, source, and event time (ms).

    ``match_weight`` is set when the change came from a probabilistic match (an imported
    record matched to a profile): the Splink match weight that justified it."""

    message_id: str
    source_id: str
    time_ms: int
    match_weight: float | None = None


class IdentityEdge(msgspec.Struct, frozen=True, gc=False):
    """An identifier of a profile and the event that attached it."""

    id_type: str
    value: str
    provenance: Provenance


class Redirect(msgspec.Struct, frozen=True, gc=False):
    """``from_id`` was merged into ``into_id`` by the event in ``provenance``."""

    from_id: str
    into_id: str
    provenance: Provenance


class Profile(msgspec.Struct, frozen=True):
    """A snapshot of one surviving profile.

    ``identities`` is sorted by (id_type, value); ``merged`` lists every redirect that leads
    (directly or through a chain) to this profile, oldest first. ``traits`` are what the
    person's events said (identify traits); ``computed`` are values Clew derived from their
    events (lifetime value, orders count, computed traits)."""

    profile_id: str
    first_seen_ms: int
    last_seen_ms: int
    identities: tuple[IdentityEdge, ...] = ()
    traits: Traits = msgspec.field(default_factory=dict)
    merged: tuple[Redirect, ...] = ()
    computed: Traits = msgspec.field(default_factory=dict)


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """One event in a profile's recent history: ``seq`` orders a profile's history (higher is
    newer in arrival order) and is the pagination cursor; ``body`` is the event's JSON."""

    seq: int
    message_id: str
    time_ms: int
    body: bytes


@dataclass(slots=True, frozen=True)
class Separation:
    """Two identifiers an operator split apart: no profile may hold both (see
    ``clew identity split``)."""

    a: tuple[str, str]
    b: tuple[str, str]
    provenance: Provenance


def keep_existing(into: Traits, from_: Traits) -> Traits:
    """The default trait merge: the surviving profile's fields win, the other fills gaps."""
    return {**from_, **into}


class ProfileReader(Protocol):
    """Reading the identity graph: who owns an identifier, which profile an id resolves to,
    and a profile's snapshot."""

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


class GraphStore(ProfileReader, Protocol):
    """The identity graph: profiles, their identities with provenance, the identity index and
    the redirects merges leave. :meth:`merge` and :meth:`delete_profile` act on everything of
    a profile (traits, history, timers too)."""

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
    def merge(
        self,
        into: str,
        from_: str,
        provenance: Provenance,
        traits: TraitsMerge = keep_existing,
        computed: TraitsMerge = keep_existing,
    ) -> str:
        """Merge the profile ``from_`` resolves to into the one ``into`` resolves to, in one
        atomic step: identities (with their provenance), index entries and history move,
        traits become ``traits(into_traits, from_traits)`` and computed values
        ``computed(into_computed, from_computed)`` (same rules as ``update_traits``'
        function), seen times widen, and a redirect from the merged-away id to the survivor
        records ``provenance``. Afterwards
        ``from_`` and every id that resolved to it resolve to the survivor. Returns the
        surviving id; merging a profile with itself changes nothing. Raises
        :class:`UnknownProfileError` if either id does not resolve."""

    @abstractmethod
    def delete_profile(self, profile_id: str) -> bool:
        """Remove every trace of the profile ``profile_id`` resolves to: identities, index
        entries, traits, computed values, history, seen times and every redirect leading to
        it, so that no old id resolves any more. Returns whether there was anything to
        delete."""


class TraitStore(Protocol):
    """A profile's traits and computed values, each replaced atomically by a function of the
    current ones."""

    @abstractmethod
    def update_traits(self, profile_id: str, update: TraitsUpdate) -> Traits:
        """Atomically replace the profile's traits by ``update(current)`` and return them.

        ``update`` must be a pure, quick function of its argument and must not call the
        store: a backend may call it more than once (optimistic retry) or while holding a
        lock. If it raises, nothing changes and the exception propagates. Raises
        :class:`UnknownProfileError` if ``profile_id`` does not resolve."""

    @abstractmethod
    def update_computed(self, profile_id: str, update: TraitsUpdate) -> Traits:
        """Like :meth:`update_traits`, for the profile's computed values."""


class HistoryStore(Protocol):
    """Each profile's recent events. ``history`` is the most events :meth:`add_event` keeps per
    profile (the oldest go first)."""

    history: int

    @abstractmethod
    def add_event(self, profile_id: str, event: StoredEvent) -> None:
        """Append the event (its ``seq`` is ignored and assigned by the store) to the
        history of the profile ``profile_id`` resolves to, dropping the oldest beyond
        :attr:`history`. Raises :class:`UnknownProfileError` if the id does not resolve."""

    @abstractmethod
    def events(self, profile_id: str, limit: int, before: int | None = None) -> list[StoredEvent]:
        """Up to ``limit`` events of the profile's history, newest first, with ``seq`` below
        ``before`` when given; empty for an unknown id."""

    @abstractmethod
    def delete_history(
        self, profile_id: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> int:
        """Remove the events of the history of the profile ``profile_id`` resolves to whose
        ``time_ms`` is at or after ``since_ms`` and before ``until_ms`` (``None``: unbounded
        on that side), leaving the profile and its other events as they were. Returns how
        many were removed; 0 for an unknown or deleted id."""


class BulkStore(Protocol):
    """Whole profiles at a time: paging through all of them, loading a batch's working set and
    writing it back, writing one profile as given."""

    @abstractmethod
    def scan(self, after: str | None, limit: int) -> list[Profile]:
        """Up to ``limit`` surviving profiles with ids greater than ``after``, in id order:
        page through every profile by passing the last id seen."""

    @abstractmethod
    def load(self, identities: Collection[tuple[str, str]]) -> list[Profile]:
        """Snapshots of the surviving profiles that own any of ``identities`` (``(id_type,
        value)`` pairs), each once: a bulk :meth:`lookup` + :meth:`get` for a stage that
        resolves a whole batch in memory and writes it back with :meth:`write_back`."""

    @abstractmethod
    def put_profile(self, profile: Profile, history: Sequence[StoredEvent] = ()) -> None:
        """Write a whole profile as given (identities with provenance, traits, computed,
        seen times, redirects in ``profile.merged``, and ``history``, oldest first), replacing any
        profile of that id. The identities must not belong to another profile (raises
        :class:`StoreError`). Used to re-derive profiles (``clew identity split``)."""

    @abstractmethod
    def write_back(
        self,
        profiles: Sequence[Profile],
        gone: Mapping[str, str],
        events: Sequence[tuple[str, StoredEvent]],
        moved: Collection[tuple[str, str]] | None = None,
    ) -> None:
        """Write back a working set, atomically: each profile id in ``gone`` was merged into
        the profile it maps to (its history moves there, its row goes); every profile in
        ``profiles`` then holds exactly its seen times, traits, computed values and
        identities as given (identities move to it from wherever they were; redirects in
        ``merged`` are written); ``events`` (``(profile_id, event)``, oldest first) are
        appended to the histories, trimmed to :attr:`history`. Unlike :meth:`put_profile`,
        the existing history is kept. ``moved``, when given, names every identity
        (``(id_type, value)``) of ``profiles`` that is new or belonged to another profile: the
        others are promised to be where the store has them (a backend may skip them)."""


class SeparationStore(Protocol):
    """Pairs of identifiers an operator split apart (``clew identity split``)."""

    @abstractmethod
    def add_separation(self, separation: Separation) -> None:
        """Record that the two identifiers must never share a profile (idempotent)."""

    @abstractmethod
    def separations(self) -> list[Separation]:
        """Every recorded separation, oldest first."""

    @abstractmethod
    def delete_separations(self, identities: Collection[tuple[str, str]]) -> int:
        """Remove every separation that names one of ``identities`` (``(id_type, value)``
        pairs) on either side; returns how many. Used when the person behind an identifier
        is forgotten: :meth:`delete_profile` leaves separations alone (``clew identity
        split`` deletes and re-writes profiles and must keep them)."""


class TimerStore(Protocol):
    """One timer per profile id (the audiences' time-based re-evaluation), set and read in the
    transaction of the work it triggers."""

    @abstractmethod
    def set_timers(self, due: Mapping[str, int | None]) -> None:
        """Per profile id, the time (ms, in the caller's clock) its timer is next due, replacing
        the profile's earlier timer; ``None`` removes it. One timer per profile. Ids are stored
        as given (not resolved through redirects). :meth:`merge` and :meth:`write_back` remove
        the timers of merged-away ids, :meth:`delete_profile` those of every id it removes."""

    @abstractmethod
    def due_timers(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        """``(profile_id, due_ms)`` of timers due at or before ``now_ms``, earliest first, at
        most ``limit``. Reading does not remove them: the caller replaces or removes each with
        :meth:`set_timers` in the same transaction as the work the timer triggered (so a crash
        before that commit leaves the timer to fire again, and after it never fires twice; when
        several workers share the timers, each reads them in that transaction too)."""

    @abstractmethod
    def next_timer(self) -> int | None:
        """The earliest due time of any timer, or ``None``."""


class OutboxStore(Protocol):
    """Per group, payloads a stage must produce to the log, stored in the transaction that made
    them."""

    @abstractmethod
    def outbox_put(self, group: str, payload: bytes) -> int:
        """Store an opaque payload for ``group`` (a stage's messages that must reach the log
        even if the process dies right after the store commits); returns its sequence number,
        higher than that of every payload the group had before, acknowledged or not."""

    @abstractmethod
    def outbox_pending(self, group: str, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Up to ``limit`` unacknowledged ``(seq, payload)`` of ``group``, in sequence order."""

    @abstractmethod
    def outbox_ack(self, group: str, seq: int) -> None:
        """Remove every payload of ``group`` with sequence number ``<= seq``."""


class OffsetStore(Protocol):
    """A consumer group's applied offsets, saved in the transaction of their effects."""

    @abstractmethod
    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """The ``(topic, partition) -> last applied offset`` that :meth:`save_offsets` stored
        for the consumer group; empty if none."""

    @abstractmethod
    def save_offsets(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        """Record the last offset applied per partition (in the same transaction as the
        effects, this makes a stage exactly-once)."""


class ProfileStore(
    GraphStore,
    TraitStore,
    HistoryStore,
    BulkStore,
    SeparationStore,
    TimerStore,
    OutboxStore,
    OffsetStore,
):
    """The serving store: every concern above on one storage, with transactions spanning
    them. Safe to use from several threads. A caller that needs one concern only may be typed
    by its protocol (e.g. :class:`ProfileReader`, :class:`TimerStore`); every backend
    subclasses this class.

    Besides the operations, a store states its *capabilities*: what a caller may need to
    know of the backend behind it, asked instead of its class or the configured backend name
    (docs/architecture.md, "Contracts and their backends"). The defaults here are the
    in-memory store's; each backend overrides what differs, and the contract suite checks
    each backend's values.
    """

    history: int = 100

    @property
    def reads_over_network(self) -> bool:
        """Whether a read is a network round trip (Redis), so that a caller on an event loop
        runs reads in a thread pool; when not, a read is fast enough to run inline (memory, a
        local SQLite file whose readers never wait for writers)."""
        return False

    @property
    def local_file(self) -> Path | None:
        """The file on this machine that holds the store (with its ``-wal`` beside it), for
        what is done to files: measuring the hot tier, scrubbing an erased person's bytes out
        of free pages. ``None`` when the store is kept elsewhere (memory, a server)."""
        return None

    def version(self) -> Hashable | None:
        """A token of the profiles the store holds, for a caller that keeps profiles in memory
        between its transactions: it changes whenever profiles, identities, redirects or
        histories are written, through this handle or any other (timers, the outbox, offsets
        and separations do not count). Read it inside a transaction, after its writes; if the
        next transaction finds the same token, nobody wrote profiles in between. ``None`` when
        the backend cannot tell cheaply (the default, and the Redis store's, shared by
        workers on other machines): then nothing may be kept between transactions."""
        return None

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A block in which every call of this thread on this handle forms one atomic unit:
        either all of its writes happen or, if the block raises, none. Other handles see the
        block's writes only when it ends. Blocks nest (the outermost decides). A stage wraps
        each polled batch, together with :meth:`save_offsets`, in one block."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; later calls raise :class:`StoreClosedError`. Safe to call
        twice."""
