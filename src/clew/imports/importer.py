"""``clew import profiles``: customer records from a CSV file (a CRM export) become identify
events on the ``events`` topic, linked to the profiles they probably belong to.

Each new or changed row is matched (:func:`~clew.imports.matching.match_records`) against
the profiles in the serving store and against the other rows. A pair at or above the merge
threshold is linked: the row's event carries ``context.clew.match``, an identifier of the
matched profile (its most trusted one) or of the earlier matched row, with the match weight,
and the profiles stage merges the two under every deterministic identity rule. A pair
between the review and the merge threshold is not linked but queued for a person
(:func:`confirm_review`, :func:`reject_review`). File format: docs/import.md.

Events bypass the validate stage (no tracking plan applies to an import) but not identity
resolution: blocked values, per-type limits and operator separations hold as for any event.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from clew.backends import open_existing_store
from clew.config import Settings
from clew.identity.identifiers import Identifier
from clew.identity.rules import IdentityRules
from clew.imports._csv import ImportFileError, Record, RowProblem, id_fields, read_records
from clew.imports.ledger import (
    ImportLedger,
    LedgerRow,
    ProfileImportError,
    ReviewDecidedError,
    ReviewEntry,
    ReviewNotFoundError,
    ReviewNotReadyError,
    append_events,
    confirm_review,
    encode,
    identify_event,
    match_doc,
    message_id,
    pending_reviews,
    profile_key,
    reject_review,
    to_ms,
)
from clew.imports.matching import FIELDS, Candidate, MatchThresholds, match_records
from clew.log.base import Message
from clew.store.base import Profile

__all__ = [
    "ImportFileError",
    "ImportReport",
    "InvalidSourceError",
    "Merge",
    "ProfileImportError",
    "ReviewDecidedError",
    "ReviewEntry",
    "ReviewNotFoundError",
    "ReviewNotReadyError",
    "RowProblem",
    "confirm_review",
    "import_profiles",
    "pending_reviews",
    "reject_review",
]

_SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
# The Profile API reads these as profile ids, not as identifiers.
_RESERVED_ID_TYPES = frozenset({"profile_id", "segment_id"})
_SCAN_PAGE = 1000


class InvalidSourceError(ProfileImportError, ValueError):
    """The ``--source`` name cannot name an identifier type."""


@dataclass(slots=True, frozen=True)
class Merge:
    """A record linked automatically to a profile (``other_is_profile``) or to an earlier
    record of the file, through the identifier ``link``."""

    record_id: str
    other_id: str
    other_is_profile: bool
    link: Identifier
    match_weight: float
    probability: float


@dataclass(slots=True)
class ImportReport:
    """What an import did (with ``dry_run``: would do). Reviews have id 0 on a dry run."""

    import_id: str
    source: str
    dry_run: bool
    rows_read: int = 0
    imported: int = 0
    unchanged: int = 0
    invalid: list[RowProblem] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    reviews: list[ReviewEntry] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def source_id_type(source: str, rules: IdentityRules) -> str:
    """The identifier type of ``source``'s row ids (``crm`` → ``crm_id``); raises
    :class:`InvalidSourceError` if the name is unusable or the type is taken."""
    if not _SOURCE_NAME.fullmatch(source):
        raise InvalidSourceError(
            f"source name {source!r} must be 1-40 lowercase letters, digits or _, starting "
            "with a letter (e.g. crm, shop_crm)"
        )
    id_type = f"{source}_id"
    if id_type in {*rules.id_types, *(c.id_type for c in rules.custom_ids), *_RESERVED_ID_TYPES}:
        raise InvalidSourceError(
            f"source {source!r} would make its row ids {id_type} identifiers, a type Clew "
            "already uses; choose another --source"
        )
    return id_type


def import_profiles(
    settings: Settings,
    path: Path,
    source: str,
    *,
    thresholds: MatchThresholds = MatchThresholds(),
    dry_run: bool = False,
    clock: Callable[[], datetime] = _now,
) -> ImportReport:
    """Import the customer records of the CSV file ``path`` as source ``source``.

    New and changed rows become identify events, appended to the ``events`` topic in file
    order with timestamps one millisecond apart; unchanged rows (same id and content as
    imported before) are skipped; invalid rows are reported and skipped. Returns once the
    events are durable and the ledger and review queue are updated; the profiles stage
    applies the events asynchronously. ``dry_run`` matches and reports, writing nothing.

    Raises :class:`InvalidSourceError`, :class:`ImportFileError` (nothing is imported) and
    :class:`~clew.imports.matching.MatchingUnavailableError`."""
    rules = settings.identity.rules
    id_type = source_id_type(source, rules)
    rows_read, records, invalid = read_records(path, id_type, rules)
    started = clock().astimezone(UTC)
    import_id = str(uuid.uuid4())
    report = ImportReport(import_id, source, dry_run, rows_read, invalid=invalid)
    ledger_path = settings.imports_path
    ledger = ImportLedger(ledger_path) if not dry_run or ledger_path.exists() else None
    try:
        before = ledger.hashes(source) if ledger is not None else {}
        fresh = [r for r in records if before.get(r.row_id) != r.content_hash]
        report.imported, report.unchanged = len(fresh), len(records) - len(fresh)
        links, report.merges, report.reviews = _match(
            settings, fresh, source, id_type, thresholds, import_id, to_ms(started)
        )
        messages, ledger_rows, keys = [], [], {}
        for i, rec in enumerate(fresh):
            link = links.get(rec.row_id)
            clew: dict[str, Any] = {"import": import_id}
            if link is None:
                keys[rec.row_id] = f"{id_type}:{rec.row_id}".encode()
            else:
                clew["match"] = match_doc(link.link, link.match_weight)
                # A record linked to an earlier record shares its key, so one partition
                # keeps them in order and the earlier one is resolved first.
                linked = keys[link.other_id] if not link.other_is_profile else None
                keys[rec.row_id] = linked or profile_key(link.link)
            mid = message_id(source, rec.row_id, rec.content_hash)
            when = started + timedelta(milliseconds=i)
            event = identify_event(source, rec.row_id, mid, when, rec.traits, clew)
            messages.append(Message(value=encode(event), key=keys[rec.row_id]))
            ledger_rows.append(LedgerRow(rec.row_id, rec.content_hash, mid))
        if dry_run or ledger is None:
            return report
        if messages:
            append_events(settings, messages)
        counts = {
            "rows_read": rows_read,
            "imported": report.imported,
            "unchanged": report.unchanged,
            "invalid": len(invalid),
        }
        report.reviews = ledger.record_import(
            import_id, source, str(path), to_ms(started), counts, ledger_rows, report.reviews
        )
        return report
    finally:
        if ledger is not None:
            ledger.close()


# -- matching -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Existing:
    """The serving store's profiles as the matcher sees them (``rows``, by id in
    ``fields``), the identifier a record links to per profile (its most trusted), which
    profile holds each row id of this source already, and which profile holds each
    identifier a record's columns can carry (``owner``: email, phone, loyalty id)."""

    rows: list[dict[str, str]] = field(default_factory=list)
    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    link: dict[str, Identifier] = field(default_factory=dict)
    holder: dict[str, str] = field(default_factory=dict)
    owner: dict[Identifier, str] = field(default_factory=dict)


def _existing(settings: Settings, id_type: str) -> _Existing:
    out = _Existing()
    store = open_existing_store(settings)
    if store is None:
        return out
    rules = settings.identity.rules
    by_field = id_fields(rules)
    column_types = set(by_field.values())
    try:
        after: str | None = None
        while page := store.scan(after, _SCAN_PAGE):
            after = page[-1].profile_id
            for profile in (p for p in page if p.identities):
                pid = profile.profile_id
                out.holder.update(
                    (e.value, pid) for e in profile.identities if e.id_type == id_type
                )
                out.owner.update(
                    (Identifier(e.id_type, e.value), pid)
                    for e in profile.identities
                    if e.id_type in column_types
                )
                row = _profile_row(profile, by_field, rules)
                if len(row) > 1:
                    out.rows.append(row)
                    out.fields[pid] = row
                    edge = min(
                        profile.identities,
                        key=lambda e: (
                            rules.priority(e.id_type),
                            e.provenance.time_ms,
                            e.id_type,
                            e.value,
                        ),
                    )
                    out.link[pid] = Identifier(edge.id_type, edge.value)
    finally:
        store.close()
    return out


def _profile_row(
    profile: Profile, by_field: dict[str, str], rules: IdentityRules
) -> dict[str, str]:
    """The profile's matching fields: an identifier field from its newest identity of that
    type, else from its trait; other fields from its traits."""
    newest: dict[str, tuple[int, str]] = {}
    for e in profile.identities:
        if e.id_type not in newest or e.provenance.time_ms > newest[e.id_type][0]:
            newest[e.id_type] = (e.provenance.time_ms, e.value)
    row = {"profile_id": profile.profile_id}
    for name in FIELDS:
        id_type = by_field.get(name)
        if id_type in newest:
            row[name] = newest[id_type][1]
            continue
        trait = profile.traits.get(name)
        if isinstance(trait, str | int | float) and not isinstance(trait, bool):
            value = str(trait).strip()
            if value and not (id_type is not None and rules.is_blocked(id_type, value)):
                row[name] = value
    return row


def _match(
    settings: Settings,
    fresh: Sequence[Record],
    source: str,
    id_type: str,
    thresholds: MatchThresholds,
    import_id: str,
    now_ms: int,
) -> tuple[dict[str, Merge], list[Merge], list[ReviewEntry]]:
    """Record id → its link, every link in file order, and the review candidates whose two
    sides neither the links nor shared identifiers join anyway.

    A record that shares an identifier (email, phone, loyalty id) with exactly one profile
    or earlier record joins it deterministically, whatever the matcher says: the pair is
    neither linked nor reviewed. Otherwise a record links through its best merge
    candidate: a profile, or an earlier record (a record↔record candidate is listed under
    the earlier one). An event carries one link, so the record's other merge candidates are
    queued for review."""
    if not fresh:
        return {}, [], []
    existing = _existing(settings, id_type)
    by_id = {r.row_id: r for r in fresh}
    parent: dict[tuple[bool, str], tuple[bool, str]] = {}  # union-find of what is joined

    def root(node: tuple[bool, str]) -> tuple[bool, str]:
        while parent.get(node, node) != node:
            node = parent[node]
        return node

    _join_shared_identifiers(fresh, existing, id_fields(settings.identity.rules), root, parent)
    candidates = [
        c
        for c in match_records([r.match_row for r in fresh], existing.rows, thresholds)
        if not (c.other_is_profile and existing.holder.get(c.record_id) == c.other_id)
        and root((False, c.record_id)) != root((c.other_is_profile, c.other_id))
    ]
    options: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.decision == "merge":
            options.setdefault(c.record_id if c.other_is_profile else c.other_id, []).append(c)
    left = [c for c in candidates if c.decision == "review"]

    links: dict[str, Merge] = {}
    for rec in fresh:
        ranked = sorted(options.get(rec.row_id, []), key=lambda c: -c.match_weight)
        if not ranked:
            continue
        best = ranked[0]
        left.extend(ranked[1:])
        other = best.other_id if best.other_is_profile else best.record_id
        link = existing.link[other] if best.other_is_profile else Identifier(id_type, other)
        links[rec.row_id] = Merge(
            rec.row_id, other, best.other_is_profile, link, best.match_weight, best.probability
        )
        parent[root((False, rec.row_id))] = root((best.other_is_profile, other))
    reviews = [
        _review_entry(c, existing, by_id, id_type, source, import_id, now_ms)
        for c in left
        if root((False, c.record_id)) != root((c.other_is_profile, c.other_id))
    ]
    return links, list(links.values()), reviews


def _review_entry(
    c: Candidate,
    existing: _Existing,
    by_id: dict[str, Record],
    id_type: str,
    source: str,
    import_id: str,
    now_ms: int,
) -> ReviewEntry:
    """The review queue entry of candidate ``c``: the record and its other side, a profile
    (by its link identifier) or an earlier record of the file."""
    if c.other_is_profile:
        link, other_row = existing.link[c.other_id], existing.fields[c.other_id]
    else:
        link, other_row = Identifier(id_type, c.other_id), by_id[c.other_id].match_row
    kind: Literal["profile", "record"] = "profile" if c.other_is_profile else "record"
    return ReviewEntry(
        review_id=0,
        source=source,
        record_id=c.record_id,
        other_kind=kind,
        other_id=c.other_id,
        link_type=link.id_type,
        link_value=link.value,
        probability=c.probability,
        match_weight=c.match_weight,
        record=by_id[c.record_id].match_row,
        other=other_row,
        import_id=import_id,
        created_ms=now_ms,
    )


def _join_shared_identifiers(
    fresh: Sequence[Record],
    existing: _Existing,
    by_field: dict[str, str],
    root: Callable[[tuple[bool, str]], tuple[bool, str]],
    parent: dict[tuple[bool, str], tuple[bool, str]],
) -> None:
    """Join in ``parent`` each record with what its identifiers already lead to, as the
    profiles stage will: a profile holding one of them, or an earlier record of the file
    carrying one. A record whose identifiers lead to two or more different profiles or
    records is left alone: whether those merge depends on the identity rules, so pairs with
    it still go to the matcher."""
    anchor: dict[Identifier, tuple[bool, str]] = {
        ident: (True, pid) for ident, pid in existing.owner.items()
    }
    for rec in fresh:
        idents = [
            Identifier(id_type, rec.match_row[name])
            for name, id_type in by_field.items()
            if name in rec.match_row
        ]
        node = (False, rec.row_id)
        found = {root(anchor[i]) for i in idents if i in anchor}
        if len(found) == 1:
            parent[root(node)] = found.pop()
        for ident in idents:
            anchor.setdefault(ident, node)
