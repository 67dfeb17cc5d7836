"""The contract of the catalog's storage: sources with their write keys (and keys retired
with a grace period), and access tokens by hash. :class:`clew.sources.Catalog` holds the
rules (names, key shapes, scopes, caching); a :class:`CatalogStore` only keeps records and
makes each change atomic, so that several processes, on one machine or many, agree.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from clew._errors import ServiceUnavailableError

SQL, PROFILES, ADMIN, PRIVACY, METRICS = "sql", "profiles", "admin", "privacy", "metrics"
SCOPES: tuple[str, ...] = (SQL, PROFILES, ADMIN, PRIVACY, METRICS)
"""Every scope a token can hold: ``sql`` (``POST /v1/sql``), ``profiles`` (Profile API reads),
``admin`` (sources' plans and schemas, audiences), ``privacy`` (data-subject requests),
``metrics`` (``/metrics`` and ``/health`` details when ``metrics.require_token`` is set)."""


@dataclass(slots=True, frozen=True)
class Source:
    id: str
    name: str
    write_key: str
    created_at: float
    removed_at: float | None = None


@dataclass(slots=True, frozen=True)
class Token:
    """An access token's record (never the token itself). ``legacy``: created before tokens
    had scopes; such a token holds every scope, so deployments that used it keep working."""

    name: str
    scopes: frozenset[str]
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    legacy: bool = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class SourceNameTakenError(Exception):
    """A source of that name (ignoring case) exists, perhaps removed: ``existing``."""

    def __init__(self, existing: Source) -> None:
        super().__init__(existing.name)
        self.existing = existing


class WriteKeyTakenError(Exception):
    """The write key is, or was with a grace period, another source's."""


class TokenNameTakenError(Exception):
    """A token of that name exists."""


class CatalogUnavailableError(ServiceUnavailableError):
    """The catalog's storage cannot be reached (a shared store down); retrying may work (an
    HTTP handler answers 503 with ``Retry-After``)."""


class CatalogStore(abc.ABC):
    """Where the catalog's records live. Every method is atomic on its own and safe to call
    from several threads and processes at once; what one handle writes, every other handle
    on the same storage reads from its next call (no handle caches)."""

    @abc.abstractmethod
    def add_source(self, source: Source) -> None:
        """Store a new source. Raises :class:`SourceNameTakenError` when the name is taken
        ignoring case (removed sources keep theirs), :class:`WriteKeyTakenError` when its
        key is or was another's."""

    @abc.abstractmethod
    def sources(self) -> list[Source]:
        """Every source, removed ones too, in creation order."""

    @abc.abstractmethod
    def source_named(self, name: str) -> Source | None:
        """The source called ``name`` ignoring case (the exact spelling first)."""

    @abc.abstractmethod
    def replace_key(self, source: Source, write_key: str, old_key_until: float | None) -> bool:
        """Give ``source`` the key ``write_key``; its current key keeps working until
        ``old_key_until`` (an epoch time), or stops at once when ``None``. False, and nothing
        changed, when ``source`` is no longer as given (another change came first) or was
        removed; :class:`WriteKeyTakenError` when ``write_key`` is or was in use."""

    @abc.abstractmethod
    def mark_removed(self, source: Source, removed_at: float) -> bool:
        """Stop ``source``'s keys (its retired keys are forgotten). False, and nothing
        changed, when ``source`` is no longer as given or is removed already."""

    @abc.abstractmethod
    def source_for_key(self, write_key: str, now: float) -> tuple[Source, float] | None:
        """The live source whose key, or key retired until after ``now``, is ``write_key``,
        with the time the key stops (``inf`` for a current key)."""

    @abc.abstractmethod
    def add_token(
        self,
        name: str,
        token_hash: str,
        scopes: tuple[str, ...] | None,
        created_at: float,
        expires_at: float | None,
    ) -> None:
        """Store a token's record; :class:`TokenNameTakenError` when ``name`` exists.
        ``scopes`` None: a legacy token, holding every scope."""

    @abc.abstractmethod
    def delete_token(self, name: str) -> bool:
        """Forget token ``name``; False when there was none."""

    @abc.abstractmethod
    def tokens(self) -> list[Token]:
        """Every token, by name."""

    @abc.abstractmethod
    def token_named(self, name: str) -> Token | None: ...

    @abc.abstractmethod
    def token_by_hash(self, token_hash: str) -> tuple[Token, str] | None:
        """The token whose hash is ``token_hash``, with the hash as stored."""

    @abc.abstractmethod
    def note_token_use(self, name: str, at: float) -> None:
        """Record that token ``name`` was used at ``at``; nothing when it is gone."""

    @abc.abstractmethod
    def token_hashes(self) -> list[tuple[str, str]]:
        """Every token's ``(name, hash)``, for copying a catalog (:func:`copy_catalog`)."""

    @abc.abstractmethod
    def retired_keys(self) -> list[tuple[str, str, float]]:
        """Every key retired with a grace period: ``(write_key, source_id, until)``."""

    @abc.abstractmethod
    def restore(
        self,
        sources: list[Source],
        retired: list[tuple[str, str, float]],
        tokens: list[tuple[Token, str]],
    ) -> None:
        """Add records copied from another catalog as they are (ids, keys, hashes, times),
        skipping any whose id, name or key is already here. For migrations only."""

    @abc.abstractmethod
    def where(self) -> str:
        """Where the records are kept, for messages."""

    @abc.abstractmethod
    def close(self) -> None: ...


def copy_catalog(source: CatalogStore, target: CatalogStore) -> tuple[int, int, list[Source]]:
    """Copy every source (with its id, keys and retired keys) and token (its hash, scopes,
    expiry and last use) of ``source`` into ``target``, skipping what ``target`` has already.
    Returns how many of ``source``'s sources and tokens ``target`` holds afterwards, and the
    sources it could not take (their name or key is another source's there)."""
    by_name = dict(source.token_hashes())
    tokens = [(t, by_name[t.name]) for t in source.tokens() if t.name in by_name]
    sources = source.sources()
    target.restore(sources, source.retired_keys(), tokens)
    ids = {s.id for s in target.sources()}
    hashes = {digest for _, digest in target.token_hashes()}
    return (
        sum(1 for s in sources if s.id in ids),
        sum(1 for _, digest in tokens if digest in hashes),
        [s for s in sources if s.id not in ids],
    )
