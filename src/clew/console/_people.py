"""The people section's read model: finding a profile by whatever a person typed, and
everything its page shows, read by index (the identity index, the profile's own row, lake
rows filtered by its identifiers), never by scanning profiles.

The provenance is :meth:`IdentityResolver.explain`'s, grouped by the event that made each
change, so the page shows which identifiers one event linked together.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clew.api.profiles import PROFILE_ID_TYPES, iso_time
from clew.audiences.definitions import AudienceDef, DefinitionError
from clew.batch.split import InvalidIdentifierError, ProfileNotFoundError, find_profile
from clew.console._context import ConsoleContext
from clew.identity.consent import CONSENT, CONSENT_HISTORY
from clew.identity.dropped import DroppedIdentifier, dropped_identifiers
from clew.identity.identifiers import ANONYMOUS_ID, EMAIL, USER_ID, normalise_identifier
from clew.identity.resolver import Explanation, IdentityResolver
from clew.lake.query import QueryError
from clew.store.base import Profile, Separation, UnknownProfileError

TIMELINE_LIMIT = 50
AUDIENCE_CHANGES_LIMIT = 100
_QUERY_TIMEOUT_S = 10.0
AUDIENCES = "audiences"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ALIASES = {"userId": USER_ID, "anonymousId": ANONYMOUS_ID, "profileId": "profile_id"}
# A bare value (no ``type:``) is tried as each of these, in this order.
_BARE_TYPES = (USER_ID, EMAIL, ANONYMOUS_ID)


class NotFound(LookupError):
    """Nobody matches what was searched; the message says what was tried."""


def find(ctx: ConsoleContext, query: str) -> str:
    """The live profile id ``query`` names: a profile id (a merged-away one too), an
    identifier as ``type:value`` (normalised as events are), or a bare value tried as a user
    id, an email and an anonymous id. Each try is one index lookup. Raises :class:`NotFound`.
    """
    store, rules = ctx.profiles, ctx.settings.identity.rules
    text = query.strip()
    if not text:
        raise NotFound("type an identifier to search for")
    id_type, colon, value = text.partition(":")
    id_type = _ALIASES.get(id_type.strip(), id_type.strip())
    if colon and id_type in PROFILE_ID_TYPES:
        found = store.resolve(value.strip())
        if found is None:
            raise NotFound(f"no profile has the id {value.strip()!r}")
        return found
    message = ""
    if colon and value.strip():
        try:
            return find_profile(store, f"{id_type}:{value}", rules)
        except (ProfileNotFoundError, InvalidIdentifierError) as exc:
            message = str(exc)
    live = store.resolve(text)
    if live is not None:
        return live
    for bare in _BARE_TYPES:
        owner = store.lookup(bare, normalise_identifier(bare, text))
        if owner is not None:
            return owner
    raise NotFound(
        message
        or f"no profile holds {text!r} as a user id, email or anonymous id, nor is it a "
        "profile id; write another identifier as type:value, e.g. phone:+442079460958"
    )


@dataclass(slots=True)
class Cause:
    """One event and what it did to the profile: identifiers attached, profiles merged."""

    message_id: str
    source: str
    time: str
    match_weight: float | None
    attached: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ProfileView:
    profile: Profile
    first_seen: str
    last_seen: str
    identities: list[dict[str, Any]]
    causes: list[Cause]
    separations: list[Separation]
    dropped: list[DroppedIdentifier]
    history_full: bool
    traits: list[tuple[str, str]]
    computed: list[tuple[str, str]]
    audiences: list[dict[str, Any]]
    audience_changes: list[dict[str, Any]]
    consent: dict[str, Any] | None
    consent_history: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    lake_error: str | None
    sources: dict[str, str]

    @property
    def identifiers(self) -> list[str]:
        return [f"{e.id_type}:{e.value}" for e in self.profile.identities]


def view(ctx: ConsoleContext, profile_id: str) -> ProfileView | None:
    """Everything the profile page shows, or ``None`` when ``profile_id`` resolves to no
    profile (deleted, split away)."""
    store, rules = ctx.profiles, ctx.settings.identity.rules
    profile = store.get(profile_id)
    if profile is None:
        return None
    names = {s.id: s.name for s in ctx.catalog.sources()}
    # The two lake queries (most of the page's time: each opens the lake) run side by side,
    # and beside the store reads.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="clew-console-person") as pool:
        asked_changes = pool.submit(_audience_changes, ctx, profile)
        asked_timeline = pool.submit(_timeline, ctx, profile, names)
        try:
            lines = IdentityResolver(store, rules).explain(profile.profile_id)
            dropped = dropped_identifiers(store, profile.profile_id, rules)
        except UnknownProfileError:
            return None
        held = {(e.id_type, e.value) for e in profile.identities}
        lake_error: str | None = None
        try:
            changes, timeline = asked_changes.result(), asked_timeline.result()
        except QueryError as exc:
            changes, timeline, lake_error = [], [], str(exc)
    computed = profile.computed
    current = computed.get(AUDIENCES)
    members = list(current) if isinstance(current, list) else []
    return ProfileView(
        profile=profile,
        first_seen=iso_time(profile.first_seen_ms),
        last_seen=iso_time(profile.last_seen_ms),
        identities=[
            {
                "identifier": f"{e.id_type}:{e.value}",
                "message_id": e.provenance.message_id,
                "source": names.get(e.provenance.source_id, e.provenance.source_id),
                "time": iso_time(e.provenance.time_ms),
                "match_weight": e.provenance.match_weight,
            }
            for e in profile.identities
        ],
        causes=_causes(lines, names),
        separations=[s for s in store.separations() if s.a in held or s.b in held],
        dropped=list(dropped.items),
        history_full=dropped.history_full,
        traits=_pairs(profile.traits),
        computed=_pairs(
            {k: v for k, v in computed.items() if k not in (AUDIENCES, CONSENT) and k[:1] != "_"}
        ),
        audiences=[_membership(ctx, str(name), changes) for name in members],
        audience_changes=changes,
        consent=computed.get(CONSENT) if isinstance(computed.get(CONSENT), dict) else None,
        consent_history=[
            {
                "time": iso_time(int(e.get("time_ms", 0))),
                "preferences": e.get("categoryPreferences", {}),
                "message_id": e.get("message_id", ""),
            }
            for e in reversed(computed.get(CONSENT_HISTORY, []))
            if isinstance(e, dict)
        ],
        timeline=timeline,
        lake_error=lake_error,
        sources=names,
    )


def _causes(lines: list[Explanation], names: dict[str, str]) -> list[Cause]:
    """The explanation grouped by event, oldest first: one event may attach several
    identifiers at once (that is what links them) or merge a profile in."""
    by_event: dict[tuple[str, str], Cause] = {}
    for line in lines:
        p = line.provenance
        cause = by_event.setdefault(
            (p.source_id, p.message_id),
            Cause(p.message_id, names.get(p.source_id, p.source_id), iso_time(p.time_ms), None),
        )
        if p.match_weight is not None:
            cause.match_weight = p.match_weight
        if line.identifier is not None:
            cause.attached.append(str(line.identifier))
        elif line.merged_profile is not None:
            cause.merged.append(line.merged_profile)
    return list(by_event.values())


def _pairs(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, _show(v)) for k, v in sorted(values.items())]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _in(values: list[str]) -> str:
    return "(" + ", ".join(_literal(v) for v in values) + ")" if values else "(NULL)"


def _profile_ids(profile: Profile) -> list[str]:
    return [profile.profile_id, *(r.from_id for r in profile.merged)]


def _audience_changes(ctx: ConsoleContext, profile: Profile) -> list[dict[str, Any]]:
    """The profile's audience entries and exits from the lake's ``audience_changes``
    (under its own id and the ids merged into it), newest first."""
    rows = ctx.lake.sql(
        "SELECT kind, audience, cause, changed_at FROM audience_changes "
        f"WHERE profile_id IN {_in(_profile_ids(profile))} AND audience IS NOT NULL "
        f"ORDER BY changed_at DESC LIMIT {AUDIENCE_CHANGES_LIMIT}",
        max_rows=AUDIENCE_CHANGES_LIMIT,
        timeout_s=_QUERY_TIMEOUT_S,
    ).rows
    return [
        {
            "entered": kind == "audience_entered",
            "audience": audience,
            "cause": cause,
            "at": _when(changed_at),
        }
        for kind, audience, cause, changed_at in rows
    ]


_CAUSES = {
    "event": "an event of the person",
    "timer": "time passed (a window or a funnel moved on)",
    "backfill": "the backfill of a new or changed definition",
}


def _membership(ctx: ConsoleContext, name: str, changes: list[dict[str, Any]]) -> dict[str, Any]:
    """When the person last entered the audience, by what, and the audience's condition."""
    entry = next((c for c in changes if c["audience"] == name and c["entered"]), None)
    try:
        definition = ctx.audiences.get(name)
    except DefinitionError:
        definition = None
    condition = definition.source.get("condition") if isinstance(definition, AudienceDef) else None
    return {
        "name": name,
        "since": entry["at"] if entry else None,
        "cause": _CAUSES.get(entry["cause"], entry["cause"]) if entry else None,
        "condition": _show(condition) if condition is not None else "",
    }


def _timeline(ctx: ConsoleContext, profile: Profile, names: dict[str, str]) -> list[dict[str, Any]]:
    """The person's newest events in the lake: rows whose user or anonymous id is one of the
    profile's, or that its recent history names (events that carried only an email, say).
    Only the ``event_date`` partitions between the profile's first and last seen (event
    times, a day's margin each side) are read."""
    ids = sorted({e.value for e in profile.identities if e.id_type in (USER_ID, ANONYMOUS_ID)})
    recent = sorted({e.message_id for e in ctx.profiles.events(profile.profile_id, 100)})
    first = (_EPOCH + timedelta(milliseconds=profile.first_seen_ms, days=-1)).date()
    last = (_EPOCH + timedelta(milliseconds=profile.last_seen_ms, days=1)).date()
    rows = ctx.lake.sql(
        "SELECT message_id, type, coalesce(event, name), source_id, timestamp, received_at, "
        "user_id, anonymous_id, properties, traits, context FROM events "
        f"WHERE event_date BETWEEN DATE '{first.isoformat()}' AND DATE '{last.isoformat()}' "
        f"AND (user_id IN {_in(ids)} OR anonymous_id IN {_in(ids)} "
        f"OR previous_id IN {_in(ids)} OR message_id IN {_in(recent)}) "
        f"ORDER BY timestamp DESC, received_at DESC LIMIT {TIMELINE_LIMIT}",
        max_rows=TIMELINE_LIMIT,
        timeout_s=_QUERY_TIMEOUT_S,
    ).rows
    out = []
    for message_id, kind, name, source_id, at, received, user_id, anon, props, traits, ctx_ in rows:
        out.append(
            {
                "message_id": message_id,
                "type": kind,
                "name": name or "",
                "source": names.get(source_id, source_id),
                "time": _when(at),
                "received": _when(received),
                "who": ", ".join(
                    f"{t}:{v}" for t, v in ((USER_ID, user_id), (ANONYMOUS_ID, anon)) if v
                ),
                "json": _pretty(
                    {"properties": props, "traits": traits, "context": ctx_},
                ),
            }
        )
    return out


def _pretty(columns: dict[str, str | None]) -> str:
    doc = {}
    for key, text in columns.items():
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if value:
            doc[key] = value
    return json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)
