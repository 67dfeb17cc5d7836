"""The suppression list: salted hashes of identifiers whose events Clew refuses to store.

:class:`SuppressionList` writes the list (in ``privacy.db``; ``RedisSuppressionList`` in
Redis when the serving store is Redis, so that collectors and validate workers on every machine
see one list; both in :mod:`clew.suppression_list`); :class:`Suppression` answers "is this
event suppressed?" from memory, for the collector and the validate stage. Every change to the
list bumps a generation counter in the same transaction; a checker looks at the counter at
most every :data:`RELOAD_S` seconds and reloads the hashes when it moved, so a suppression
reaches every process within about half a second and no event costs a query.

Entries are grouped by the request that added them, so an ``unsuppress`` by any one
identifier lifts every identifier suppressed with it, even after the profile that tied them
together was deleted. A deletion's own entries are marked temporary (see the runner).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec

from clew._errors import ServiceUnavailableError
from clew.config import Settings
from clew.events import Event
from clew.identity.identifiers import ANONYMOUS_ID, extract
from clew.identity.rules import IdentityRules
from clew.privacy._salt import digest_normalised, load_salt

# The stored list is a small store of the backends layer; its names are re-exported here.
from clew.suppression_list import (
    SCHEMA,
    ListSource,
    ListWriter,
    SqliteListSource,
    SuppressedHash,
    SuppressionList,
)

__all__ = [
    "RELOAD_S",
    "SCHEMA",
    "ListSource",
    "ListWriter",
    "SqliteListSource",
    "SuppressedHash",
    "Suppression",
    "SuppressionList",
    "open_suppression_list",
]

logger = logging.getLogger(__name__)

# Longest a checker goes without looking for changes to the list.
RELOAD_S = 0.5
# Answers a checker remembers (one per distinct set of identifier fields; ~10 MB at most).
_SEEN_MAX = 20_000


def open_suppression_list(settings: Settings) -> ListWriter:
    """The configured list's writer (chosen in :func:`clew.backends.open_suppression_list`)."""
    from clew.backends import open_suppression_list as opened

    return opened(settings)


class _Ids(msgspec.Struct):
    """The parts of a raw event that carry identifiers (the rest is skipped unread)."""

    type: Any = None
    userId: Any = None
    anonymousId: Any = None
    previousId: Any = None
    traits: Any = None
    context: Any = None
    properties: Any = None


class _BatchContext(msgspec.Struct):
    context: Any = None


_ids_decoder = msgspec.json.Decoder(_Ids)
_batch_context = msgspec.json.Decoder(_BatchContext)
_key_encoder = msgspec.json.Encoder()


class _Reads:
    """The keys of ``traits``, ``context`` and ``properties`` that identity extraction reads
    (see :func:`~clew.identity.identifiers.extract`): the fixed ones and the first key of
    every custom id path. ``None``: the whole object (a custom path naming only a root)."""

    def __init__(self, rules: IdentityRules) -> None:
        reads: dict[str, set[str] | None] = {
            "traits": {"email", "phone"},
            "context": {"traits", "externalIds"},
            "properties": set(),
        }
        for custom in rules.table().custom_ids:
            for path in custom.paths:
                root, _, rest = path.partition(".")
                root = root if root in ("traits", "properties") else "context"
                keys = reads[root]
                if not rest:
                    reads[root] = None
                elif keys is not None:
                    keys.add(rest.split(".")[0])
        self.traits, self.context, self.properties = (
            None if keys is None else tuple(sorted(keys)) for keys in reads.values()
        )


def _pick(obj: Any, keys: tuple[str, ...] | None) -> dict[str, Any]:
    if not isinstance(obj, dict) or not obj:
        return {}
    if keys is None:
        return obj
    return {k: obj[k] for k in keys if k in obj}


class Suppression:
    """The in-memory checker. Not thread-safe: give each thread its own (they are cheap).

    ``is_suppressed`` costs nothing while the list is empty. Otherwise an event is reduced to
    the fields identity extraction reads, and the answer for those fields is remembered until
    the list changes: a person's next events cost a lookup, a new person a few HMACs."""

    def __init__(
        self,
        source: Path | ListSource,
        salt: bytes,
        rules: IdentityRules,
        *,
        keep_on_outage: bool = False,
    ) -> None:
        self._source = SqliteListSource(source) if isinstance(source, Path) else source
        self._keep_on_outage = keep_on_outage
        self._outage_logged = False
        self._salt = salt
        self._rules = rules
        self._table = rules.table()
        self._reads = _Reads(rules)
        self._hashes: frozenset[bytes] = frozenset()
        self._seen: dict[bytes, bool] = {}
        self._generation = -1
        self._checked = 0.0
        self.refresh(force=True)

    @classmethod
    def open(cls, settings: Settings, *, keep_on_outage: bool = False) -> Suppression:
        """The checker of the configured list (:func:`clew.backends.open_suppression_source`).
        ``keep_on_outage``: see :meth:`refresh`."""
        from clew.backends import open_suppression_source

        return cls(
            open_suppression_source(settings),
            load_salt(settings),
            settings.identity.rules,
            keep_on_outage=keep_on_outage,
        )

    def refresh(self, force: bool = False) -> None:
        """Reload the list if it changed; looks at most every :data:`RELOAD_S` seconds unless
        ``force``. When the list's store cannot be reached this raises
        :class:`~clew._errors.ServiceUnavailableError`, unless the checker was made with
        ``keep_on_outage`` and has loaded the list before: it then goes on with that list
        (the collector does, since the validate stage checks every event again against the
        list as it is when it gets there, and the privacy runner waits for that stage)."""
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_S:
            return
        self._checked = now
        try:
            generation = self._source.generation()
            if generation == self._generation:
                self._outage_logged = False
                return
            hashes = frozenset(bytes.fromhex(h) for h in self._source.hashes())
        except ServiceUnavailableError as exc:
            if not self._keep_on_outage or self._generation < 0:
                raise
            if not self._outage_logged:
                self._outage_logged = True
                logger.warning("suppression list unreachable; going on with the last one: %s", exc)
            return
        self._outage_logged = False
        self._hashes = hashes
        self._seen.clear()
        self._generation = generation

    @property
    def active(self) -> bool:
        """Whether anything is suppressed (as of the last refresh)."""
        self.refresh()
        return bool(self._hashes)

    def is_suppressed(self, event: Event) -> bool:
        """Whether any identifier of ``event`` (as identity resolution extracts it; an
        alias's ``previousId`` counted both as user id and anonymous id) is suppressed."""
        self.refresh()
        if not self._hashes:
            return False
        return self._lookup(
            event.type,
            event.user_id,
            event.anonymous_id,
            event.previous_id,
            event.traits,
            event.context,
            event.properties,
        )

    def is_suppressed_raw(
        self, raw: bytes | msgspec.Raw, path_type: str, batch_context: Any = None
    ) -> bool:
        """:meth:`is_suppressed` for one event as the collector receives it (JSON bytes;
        ``batch_context`` is the batch request's shared ``context``). An event that cannot be
        read is not suppressed here: the validate stage dead-letters it."""
        self.refresh()
        if not self._hashes:
            return False
        try:
            ids = _ids_decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return False
        context = ids.context if isinstance(ids.context, dict) else {}
        if isinstance(batch_context, dict):
            context = {**batch_context, **context}
        kind = path_type if path_type != "batch" else ids.type
        traits = ids.traits
        if kind == "identify" and not traits and isinstance(context.get("traits"), dict):
            # As the validate stage normalises it (analytics.js < 2 sent traits there).
            traits = context["traits"]
        return self._lookup(
            kind,
            _text(ids.userId),
            _text(ids.anonymousId),
            _text(ids.previousId),
            traits,
            context,
            ids.properties,
        )

    def _lookup(
        self,
        kind: Any,
        user_id: str | None,
        anonymous_id: str | None,
        previous_id: str | None,
        traits: Any,
        context: Any,
        properties: Any,
    ) -> bool:
        reads = self._reads
        alias = kind == "alias"
        parts = (
            alias,
            user_id,
            anonymous_id,
            previous_id if alias else None,
            _pick(traits, reads.traits),
            _pick(context, reads.context),
            _pick(properties, reads.properties),
        )
        key = _key_encoder.encode(parts)
        found = self._seen.get(key)
        if found is None:
            found = self._match(*parts)
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[key] = found
        return found

    def _match(
        self,
        alias: bool,
        user_id: str | None,
        anonymous_id: str | None,
        previous_id: str | None,
        traits: dict[str, Any],
        context: dict[str, Any],
        properties: dict[str, Any],
    ) -> bool:
        event = Event(
            type="alias" if alias else "track",
            message_id="",
            timestamp="",
            received_at="",
            source_id="",
            user_id=user_id,
            anonymous_id=anonymous_id,
            previous_id=previous_id,
            traits=traits,
            context=context,
            properties=properties,
        )
        salt, hashes = self._salt, self._hashes
        for ident in extract(event, self._rules, table=self._table).identifiers:
            if digest_normalised(salt, ident.id_type, ident.value) in hashes:
                return True
        if previous_id:
            return digest_normalised(salt, ANONYMOUS_ID, previous_id.strip()) in hashes
        return False

    @staticmethod
    def batch_context(body: bytes) -> Any:
        """The shared ``context`` of a batch request body (``None`` if it has none)."""
        try:
            return _batch_context.decode(body).context
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None

    def close(self) -> None:
        self._source.close()


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None
