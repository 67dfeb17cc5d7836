"""Sources (each with a write key that may only send events) and access tokens (each with
scopes saying which APIs it may use): :class:`Catalog`, over a
:class:`~clew.catalog_store.CatalogStore` (``meta.db`` in the data directory, or the shared
Redis of a scale-out deployment, chosen by :func:`clew.backends.open_catalog_store`).

Tokens are stored as SHA-256 hashes: a token is shown once, when it is created. Every process
sharing the catalog's store sees a revoked token, a rotated write key or a removed source
within :data:`KEY_RECHECK_S` (tokens at once: they are looked up on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from clew._names import did_you_mean
from clew.backends import open_catalog_store, open_existing_catalog_store
from clew.catalog_store import (
    ADMIN,
    METRICS,
    PRIVACY,
    PROFILES,
    SCOPES,
    SQL,
    CatalogStore,
    CatalogUnavailableError,
    Source,
    SourceNameTakenError,
    SqliteCatalogStore,
    Token,
    TokenNameTakenError,
    WriteKeyTakenError,
)

if TYPE_CHECKING:
    from clew.config import Settings

__all__ = [
    "ADMIN",
    "ALL_SCOPES",
    "DEFAULT_SCOPES",
    "DEFAULT_SOURCE",
    "KEY_RECHECK_S",
    "METRICS",
    "PRIVACY",
    "PROFILES",
    "SCOPES",
    "SQL",
    "Catalog",
    "CatalogError",
    "Source",
    "Token",
    "parse_scopes",
]

DEFAULT_SOURCE = "default"

ALL_SCOPES = "all"
"""What ``clew tokens create --scope`` takes for every scope."""
DEFAULT_SCOPES: tuple[str, ...] = (SQL, PROFILES)
"""A token's scopes when none are asked for: reads only."""

KEY_RECHECK_S = 0.5
"""How long a process trusts a write key it looked up before reading the catalog again."""
_LAST_USED_EVERY_S = 60.0
# Attempts at a change to a source that another process keeps changing first.
_RETRIES = 20


class CatalogError(ValueError):
    """A source or token request that cannot be honoured; the message says why."""


def parse_scopes(requested: Iterable[str]) -> tuple[str, ...]:
    """The scopes named in ``requested`` (each may be comma-separated; ``all`` means every
    scope), in :data:`SCOPES` order; :data:`DEFAULT_SCOPES` when none are named."""
    names = {n.strip().lower() for item in requested for n in item.split(",") if n.strip()}
    if not names:
        return DEFAULT_SCOPES
    if ALL_SCOPES in names:
        names = (names - {ALL_SCOPES}) | set(SCOPES)
    unknown = sorted(names - set(SCOPES))
    if unknown:
        raise CatalogError(
            f"unknown scope {', '.join(unknown)}; choose from {', '.join(SCOPES)} or {ALL_SCOPES}"
        )
    return tuple(s for s in SCOPES if s in names)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Catalog:
    """Thread-safe; any number of processes (and, with a shared store, machines) may hold a
    catalog over the same store."""

    def __init__(self, store: CatalogStore | Path) -> None:
        """``store``: where the records are; a path stands for a ``meta.db`` there (what
        :meth:`open` gives with the embedded default)."""
        self.store = SqliteCatalogStore(store) if isinstance(store, Path) else store
        self._lock = threading.Lock()
        # write key -> (its source, when the key stops working, when it was looked up)
        self._by_key: dict[str, tuple[Source, float, float]] = {}
        self._used_written: dict[str, float] = {}

    @classmethod
    def open(cls, settings: Settings) -> Catalog:
        """The deployment's catalog (created if missing); the caller closes it."""
        return cls(open_catalog_store(settings))

    @classmethod
    def open_existing(cls, settings: Settings) -> Catalog | None:
        """Like :meth:`open`, but ``None`` when the catalog is a file not made yet."""
        store = open_existing_catalog_store(settings)
        return None if store is None else cls(store)

    def close(self) -> None:
        self.store.close()

    # -- sources ---------------------------------------------------------------------------

    def create_source(self, name: str, write_key: str | None = None) -> Source:
        """A new source. Names are unique ignoring case, and a removed source's name stays
        taken (its events keep naming it). Asking again for a live source with its own name
        and key returns it unchanged, so a deploy pipeline may run the same command on every
        machine."""
        if not name or len(name) > 100:
            raise CatalogError("a source name must be 1 to 100 characters")
        key = write_key or secrets.token_urlsafe(24)
        _check_key(key)
        src = Source(
            id=f"src_{secrets.token_hex(8)}", name=name, write_key=key, created_at=time.time()
        )
        try:
            self.store.add_source(src)
        except SourceNameTakenError as e:
            same = e.existing
            if (same.name, same.write_key, same.removed_at) == (name, write_key, None):
                return same
            raise CatalogError(_name_taken(name, same.name, same.removed_at is not None)) from None
        except WriteKeyTakenError:
            raise CatalogError("that write key is already used by another source") from None
        return src

    def ensure_source(self, name: str) -> Source:
        """The source called ``name`` (even a removed one), created if missing. Atomic in the
        store: processes on several machines calling it at once all get the same source."""
        existing = self.store.source_named(name)
        if existing is not None:
            return existing
        try:
            return self.create_source(name)
        except CatalogError:
            # Another process created it between the read and the write: theirs is the one.
            existing = self.store.source_named(name)
            if existing is None:
                raise
            return existing

    def sources(self, include_removed: bool = True) -> list[Source]:
        """Sources in creation order; removed ones too unless asked not to (their events
        still name them)."""
        found = self.store.sources()
        return found if include_removed else [s for s in found if s.removed_at is None]

    def source(self, name: str) -> Source:
        """The source called ``name``, matched ignoring case; :class:`CatalogError` if none."""
        found = self.store.source_named(name)
        if found is None:
            close = did_you_mean(name, (s.name for s in self.sources(include_removed=False)))
            raise CatalogError(
                f"there is no source named {name!r}{close}; `clew sources list` shows them"
            )
        return found

    def rotate_write_key(
        self, name: str, grace_s: float = 0.0, write_key: str | None = None
    ) -> Source:
        """Give source ``name`` a new write key. The old one keeps working for ``grace_s``
        seconds (none by default), then is refused within :data:`KEY_RECHECK_S` everywhere."""
        if grace_s < 0:
            raise CatalogError("the grace period cannot be negative")
        key = write_key or secrets.token_urlsafe(24)
        _check_key(key)
        for _ in range(_RETRIES):
            src = self.source(name)
            if src.removed_at is not None:
                raise CatalogError(f"source {src.name!r} was removed; it has no key to rotate")
            until = time.time() + grace_s if grace_s > 0 else None
            try:
                if self.store.replace_key(src, key, until):
                    return Source(src.id, src.name, key, src.created_at)
            except WriteKeyTakenError:
                raise CatalogError("that write key is already used by another source") from None
        raise CatalogError(f"source {name!r} kept changing while its key was rotated; try again")

    def remove_source(self, name: str) -> Source:
        """Stop source ``name``'s write keys (within :data:`KEY_RECHECK_S` everywhere). Its
        events stay, and its name stays taken."""
        for _ in range(_RETRIES):
            src = self.source(name)
            if src.removed_at is not None:
                raise CatalogError(f"source {src.name!r} was already removed")
            removed_at = time.time()
            if self.store.mark_removed(src, removed_at):
                return Source(src.id, src.name, src.write_key, src.created_at, removed_at)
        raise CatalogError(f"source {name!r} kept changing while it was removed; try again")

    def source_for_key(self, write_key: str) -> Source | None:
        """The source ``write_key`` sends events to, ``None`` when it is no (longer a) key.

        A key found is trusted for :data:`KEY_RECHECK_S` before the catalog is read again, so a
        rotated, expired or removed key stops within that time in every process. While a
        shared store cannot be reached, a key found before keeps working until it expires
        (a rotation or removal cannot happen meanwhile); an unknown one raises
        :class:`~clew.catalog_store.CatalogUnavailableError`."""
        now = time.monotonic()
        cached = self._by_key.get(write_key)
        if cached is not None:
            src, until, checked = cached
            if now - checked < KEY_RECHECK_S and time.time() < until:
                return src
        try:
            found = self.store.source_for_key(write_key, time.time())
        except CatalogUnavailableError:
            if cached is not None and time.time() < cached[1]:
                return cached[0]
            raise
        if found is None:
            self._by_key.pop(write_key, None)
            return None
        self._by_key[write_key] = (found[0], found[1], now)
        return found[0]

    # -- tokens ----------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        expires_in_s: float | None = None,
    ) -> str:
        """A new access token holding ``scopes`` (names from :data:`SCOPES`, or ``all``),
        valid for ``expires_in_s`` seconds (forever when ``None``). Only its hash is kept."""
        if not name:
            raise CatalogError("a token needs a name")
        granted = parse_scopes(scopes)
        if expires_in_s is not None and expires_in_s <= 0:
            raise CatalogError("a token's lifetime must be positive")
        now = time.time()
        expires_at = None if expires_in_s is None else now + expires_in_s
        token = "clew_" + secrets.token_urlsafe(32)
        try:
            self.store.add_token(name, _hash(token), granted, now, expires_at)
        except TokenNameTakenError:
            raise CatalogError(f"a token named {name!r} already exists") from None
        return token

    def revoke_token(self, name: str) -> None:
        """Forget token ``name``: every process refuses it from its next request."""
        if not self.store.delete_token(name):
            close = did_you_mean(name, (t.name for t in self.tokens()))
            raise CatalogError(
                f"there is no token named {name!r}{close}; `clew tokens list` shows them"
            )

    def tokens(self) -> list[Token]:
        return self.store.tokens()

    def token_named(self, name: str) -> Token | None:
        """The record of the token called ``name`` (expired or not), ``None`` when there is
        none (never created, or revoked)."""
        return self.store.token_named(name)

    def token_names(self) -> list[str]:
        return [t.name for t in self.tokens()]

    def token_for(self, token: str) -> Token | None:
        """The record of ``token`` (expired or not), ``None`` for an unknown or revoked one.
        A token found has its last use recorded (at most once a minute per process)."""
        digest = _hash(token)
        row = self.store.token_by_hash(digest)
        if row is None or not hmac.compare_digest(row[1], digest):
            return None
        self._note_use(row[0].name)
        return row[0]

    def _note_use(self, name: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._used_written.get(name, -_LAST_USED_EVERY_S) < _LAST_USED_EVERY_S:
                return
            self._used_written[name] = now
        self.store.note_token_use(name, time.time())

    def token_name(self, token: str) -> str | None:
        """The name of a valid access token (for audit records), ``None`` for an invalid one."""
        found = self.token_for(token)
        return None if found is None or found.expired(time.time()) else found.name

    def verify_token(self, token: str) -> bool:
        """Whether ``token`` is a known, unexpired access token (whatever its scopes)."""
        return self.token_name(token) is not None


def _check_key(key: str) -> None:
    if len(key) < 8 or ":" in key:
        raise CatalogError("a write key must be at least 8 characters and contain no ':'")


def _name_taken(name: str, existing: str, removed: bool) -> str:
    why = "" if existing == name else " (source names are unique ignoring case)"
    if removed:
        return (
            f"source {existing!r} was removed; its name stays taken so its events keep their "
            f"source{why}; choose another name"
        )
    return f"a source named {existing!r} already exists{why}; choose another name"
