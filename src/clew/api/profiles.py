"""The Profile API: a person's profile looked up by any of their identifiers, for the services
that personalise with it (docs/profile-api.md). Access token required.

- ``GET /v1/profiles/{id_type}:{value}`` — identities with provenance, traits, computed
  traits, audiences, first and last seen
- ``GET /v1/spaces/{space}/collections/users/profiles/{id_type}:{value}/traits``,
  ``…/events``, ``…/external_ids``, ``…/metadata`` — the paths, parameters and response
  shapes of Segment's Profile API; ``{space}`` is accepted and ignored (one space per Clew)

``profile_id:<id>`` (or Segment's ``segment_id:<id>``) addresses a profile by its id, including
an id merged away since; every identifier of a merged profile leads to the survivor.

Every path takes ``after=POSITION[&wait_ms=N]``: answer once the profiles stage has applied
what a Tracking API answer said it stored at ``POSITION`` (``api/_after.py``).
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from clew._errors import ServiceUnavailableError
from clew.api._after import wait_until_applied
from clew.api._auth import check_token_or_basic, error
from clew.events import parse_time
from clew.identity.identifiers import normalise_identifier
from clew.log.base import Log
from clew.sources import PROFILES, Catalog
from clew.stages.applied import ProgressReader
from clew.store.base import Profile, ProfileStore, Provenance, StoredEvent, Traits

DEFAULT_LIMIT = 10
MAX_LIMIT = 200
AUDIENCES = "audiences"
"""The computed key holding the names of the audiences a profile is in."""
PROFILE_ID_TYPES = frozenset({"profile_id", "segment_id"})

_SEGMENT_PATH = "/v1/spaces/{space}/collections/users/profiles/{identifier:path}"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SCAN_BATCH = 100
# Seconds a client is told to wait when the serving store cannot be reached.
STORE_RETRY_AFTER_S = 5
_SHAPE = "`id_type:value`, e.g. `user_id:42`, `email:ada@shop.test` or `profile_id:<id>`"


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(slots=True, frozen=True)
class _Ask:
    """One read: the identifier from the path, the query string, and the request path (for
    the cursors of paged answers; empty otherwise)."""

    id_type: str
    value: str
    query: QueryParams
    path: str


_Handler = Callable[[ProfileStore, _Ask], bytes]


def profile_routes(
    store: ProfileStore,
    catalog: Catalog,
    *,
    offload: bool = False,
    log: Log | None = None,
) -> list[BaseRoute]:
    """The Profile API's routes over ``store``, for ``Starlette(routes=…)``.

    With ``offload=False`` store reads run on the event loop: right for a store whose reads
    take microseconds and never wait on a lock held by a writer, i.e. a SQLite store handle
    used by nothing else (a WAL reader never waits for writers) or a memory store. Pass
    ``offload=True`` when the handle is shared with a writing stage (its lock can be held for
    a whole batch) or each read is a network round trip (Redis): reads then run in the
    thread pool.

    ``log``: the log the stages read, for ``after`` (without it, ``after`` is refused)."""
    progress = None if log is None else ProgressReader(log, store)

    def route(path: str, handler: _Handler, paged: bool = True) -> Route:
        async def endpoint(request: Request) -> Response:
            refused = check_token_or_basic(request, catalog, PROFILES)
            if refused is not None:
                return refused
            try:
                id_type, value = parse_lookup_identifier(request.path_params["identifier"])
                not_yet = await wait_until_applied(progress, request.query_params)
                if not_yet is not None:
                    return not_yet
                ask = _Ask(id_type, value, request.query_params, request.url.path if paged else "")
                if offload:
                    body = await run_in_threadpool(handler, store, ask)
                else:
                    body = handler(store, ask)
            except _Refused as refusal:
                return error(refusal.status, refusal.code, refusal.message)
            except ServiceUnavailableError as exc:
                refused = error(503, "store_unavailable", f"{exc}; retry later")
                refused.headers["Retry-After"] = str(STORE_RETRY_AFTER_S)
                return refused
            return Response(body, media_type="application/json")

        return Route(path, endpoint, methods=["GET"])

    return [
        route("/v1/profiles/{identifier:path}", _profile, paged=False),
        route(_SEGMENT_PATH + "/traits", _traits),
        route(_SEGMENT_PATH + "/events", _events),
        route(_SEGMENT_PATH + "/external_ids", _external_ids),
        route(_SEGMENT_PATH + "/metadata", _metadata),
    ]


def parse_lookup_identifier(text: str) -> tuple[str, str]:
    """Split ``id_type:value`` at its first colon (the value may hold more).

    >>> parse_lookup_identifier("email:ada+news@shop.test")
    ('email', 'ada+news@shop.test')
    >>> parse_lookup_identifier("user_id:urn:crm:42")
    ('user_id', 'urn:crm:42')
    """
    id_type, colon, value = text.partition(":")
    if not colon or not id_type or not value:
        raise _Refused(
            400, "invalid_identifier", f"address a profile as {_SHAPE}; got {text[:100]!r}"
        )
    return id_type, value


# -- endpoints ------------------------------------------------------------------------------


def _profile(store: ProfileStore, ask: _Ask) -> bytes:
    p = _get(store, ask)
    return msgspec.json.encode(
        {
            "profile_id": p.profile_id,
            "identities": [
                {
                    "type": e.id_type,
                    "value": e.value,
                    "source_id": e.provenance.source_id,
                    "message_id": e.provenance.message_id,
                    "timestamp": iso_time(e.provenance.time_ms),
                    "match_weight": e.provenance.match_weight,
                }
                for e in p.identities
            ],
            "traits": p.traits,
            "computed_traits": _visible_computed(p.computed),
            "audiences": _audiences(p.computed),
            "first_seen": iso_time(p.first_seen_ms),
            "last_seen": iso_time(p.last_seen_ms),
        }
    )


def _traits(store: ProfileStore, ask: _Ask) -> bytes:
    limit = _limit(ask.query)
    include = _names(ask.query, "include")
    kind = ask.query.get("class")
    after = ask.query.get("next") or ""
    if kind not in (None, "", "audience", "computed_trait"):
        raise _Refused(
            400,
            "invalid_parameter",
            f"class must be `audience` or `computed_trait` (or absent for every trait); "
            f"got {kind[:50]!r}",
        )
    p = _get(store, ask)
    traits: Traits = {}
    if not kind:
        traits.update(p.traits)
    if kind != "audience":
        traits.update(_visible_computed(p.computed))
    if kind != "computed_trait":
        traits.update((str(name), True) for name in _audiences(p.computed))
    keys = sorted(k for k in traits if include is None or k in include)
    start = bisect.bisect_left(keys, after)
    page = keys[start : start + limit]
    following = keys[start + limit] if start + limit < len(keys) else ""
    return msgspec.json.encode(
        {"traits": {k: traits[k] for k in page}, "cursor": _cursor(ask, limit, following)}
    )


def _events(store: ProfileStore, ask: _Ask) -> bytes:
    limit = _limit(ask.query)
    before = _seq_cursor(ask.query.get("next"))
    keep = _event_filter(ask.query)
    sort = ask.query.get("sort")
    if sort not in (None, "", "desc"):
        raise _Refused(
            400,
            "invalid_parameter",
            "Clew returns a profile's events newest first only: omit sort or send sort=desc",
        )
    pid = _profile_id(store, ask)
    page, more = _events_page(store, pid, limit, before, keep)
    following = str(page[-1].seq) if more else ""
    # Stored bodies are already JSON: splice them in rather than decode and re-encode.
    return b"".join(
        (
            b'{"data":[',
            b",".join(e.body for e in page),
            b'],"cursor":',
            msgspec.json.encode(_cursor(ask, limit, following)),
            b"}",
        )
    )


def _external_ids(store: ProfileStore, ask: _Ask) -> bytes:
    limit = _limit(ask.query)
    include = _names(ask.query, "include")
    after = ask.query.get("next") or ""
    p = _get(store, ask)
    edges = [e for e in p.identities if include is None or e.id_type in include]
    # Identities come sorted by (id_type, value); the cursor is the first one not yet sent.
    after_type, _, after_value = after.partition(":")
    start = bisect.bisect_left([(e.id_type, e.value) for e in edges], (after_type, after_value))
    page = edges[start : start + limit]
    rest = edges[start + limit : start + limit + 1]
    following = f"{rest[0].id_type}:{rest[0].value}" if rest else ""
    return msgspec.json.encode(
        {
            "data": [
                {
                    "id": e.value,
                    "type": e.id_type,
                    "source_id": e.provenance.source_id,
                    "collection": "users",
                    "created_at": iso_time(e.provenance.time_ms),
                    "encoding": "none",
                    "first_message_id": e.provenance.message_id,
                }
                for e in page
            ],
            "cursor": _cursor(ask, limit, following),
        }
    )


def _metadata(store: ProfileStore, ask: _Ask) -> bytes:
    p = _get(store, ask)
    causes = [e.provenance for e in p.identities] + [r.provenance for r in p.merged]
    first = min(causes, key=lambda c: c.time_ms, default=None)
    newest = store.events(p.profile_id, 1)
    if newest:
        last_message_id: str | None = newest[0].message_id
        last_source_id = _fields(newest[0].body).source_id
    else:
        last: Provenance | None = max(causes, key=lambda c: c.time_ms, default=None)
        last_message_id = last.message_id if last else None
        last_source_id = last.source_id if last else None
    return msgspec.json.encode(
        {
            "metadata": {
                "created_at": iso_time(p.first_seen_ms),
                "updated_at": iso_time(p.last_seen_ms),
                "expires_at": None,
                "first_message_id": first.message_id if first else None,
                "first_source_id": first.source_id if first else None,
                "last_message_id": last_message_id,
                "last_source_id": last_source_id,
            }
        }
    )


# -- helpers --------------------------------------------------------------------------------


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 in UTC with milliseconds and ``Z``.

    >>> iso_time(1_700_000_000_123)
    '2023-11-14T22:13:20.123Z'
    """
    when = _EPOCH + dt.timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def _profile_id(store: ProfileStore, ask: _Ask) -> str:
    if ask.id_type in PROFILE_ID_TYPES:
        pid = store.resolve(ask.value)
    else:
        pid = store.lookup(ask.id_type, ask.value)
        if pid is None:
            stored = normalise_identifier(ask.id_type, ask.value)
            pid = store.lookup(ask.id_type, stored) if stored != ask.value else None
    if pid is None:
        raise _Refused(404, "profile_not_found", f"no profile has this {ask.id_type}")
    return pid


def _get(store: ProfileStore, ask: _Ask) -> Profile:
    profile = store.get(_profile_id(store, ask))
    if profile is None:  # deleted between the lookup and the read
        raise _Refused(404, "profile_not_found", f"no profile has this {ask.id_type}")
    return profile


def _visible_computed(computed: Traits) -> Traits:
    """Computed traits without audiences (listed apart) and bookkeeping (``_``-prefixed)."""
    return {k: v for k, v in computed.items() if k != AUDIENCES and not k.startswith("_")}


def _audiences(computed: Traits) -> list[Any]:
    names = computed.get(AUDIENCES)
    return list(names) if isinstance(names, list) else []


def _cursor(ask: _Ask, limit: int, following: str) -> dict[str, Any]:
    return {"url": ask.path, "has_more": bool(following), "next": following, "limit": limit}


def _limit(query: QueryParams) -> int:
    raw = query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise _Refused(
            400,
            "invalid_limit",
            f"limit must be a whole number from 1 to {MAX_LIMIT}; got {raw[:20]!r}",
        )
    return limit


def _names(query: QueryParams, key: str) -> frozenset[str] | None:
    """The comma-separated names of ``key``, or ``None`` when it is absent or empty."""
    names = frozenset(n.strip() for n in query.get(key, "").split(",") if n.strip())
    return names or None


def _seq_cursor(raw: str | None) -> int | None:
    if not raw:
        return None
    if not raw.isdigit():
        raise _Refused(
            400,
            "invalid_cursor",
            "next must be the `next` value of the previous page's cursor, as returned",
        )
    return int(raw)


def _time_param(query: QueryParams, key: str) -> int | None:
    raw = query.get(key)
    if not raw:
        return None
    try:
        return int(parse_time(raw).timestamp() * 1000)
    except (ValueError, OverflowError):
        raise _Refused(
            400,
            "invalid_parameter",
            f"{key} must be an ISO-8601 date or time, e.g. 2024-05-01 or "
            f"2024-05-01T12:00:00Z; got {raw[:50]!r}",
        ) from None


class _EventFields(msgspec.Struct, rename="camel"):
    type: Any = None
    event: Any = None
    source_id: Any = None


_fields_decoder = msgspec.json.Decoder(_EventFields)


def _fields(body: bytes) -> _EventFields:
    try:
        return _fields_decoder.decode(body)
    except msgspec.DecodeError:
        return _EventFields()


def _event_filter(query: QueryParams) -> Callable[[StoredEvent], bool] | None:
    """Segment's ``include``/``exclude`` (event names: a track's ``event``, else the call's
    ``type``) and ``start``/``end`` (event time, start inclusive, end exclusive)."""
    include, exclude = _names(query, "include"), _names(query, "exclude")
    start, end = _time_param(query, "start"), _time_param(query, "end")
    if include is None and exclude is None and start is None and end is None:
        return None

    def keep(e: StoredEvent) -> bool:
        if (start is not None and e.time_ms < start) or (end is not None and e.time_ms >= end):
            return False
        if include is None and exclude is None:
            return True
        fields = _fields(e.body)
        name = fields.event if fields.type == "track" else fields.type
        return (include is None or name in include) and (exclude is None or name not in exclude)

    return keep


def _events_page(
    store: ProfileStore,
    profile_id: str,
    limit: int,
    before: int | None,
    keep: Callable[[StoredEvent], bool] | None,
) -> tuple[list[StoredEvent], bool]:
    """Up to ``limit`` kept events with ``seq`` below ``before``, newest first, and whether
    more follow."""
    if keep is None:
        got = store.events(profile_id, limit + 1, before)
        return got[:limit], len(got) > limit
    kept: list[StoredEvent] = []
    while True:
        got = store.events(profile_id, _SCAN_BATCH, before)
        for e in got:
            if keep(e):
                if len(kept) == limit:
                    return kept, True
                kept.append(e)
        if len(got) < _SCAN_BATCH:
            return kept, False
        before = got[-1].seq
