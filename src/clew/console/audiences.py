"""Audiences and computed traits: every definition with its backfill state and, for an
audience, its size; one definition's page shows it as pushed (YAML), its size now and over
time (from the lake's ``audience_changes`` history) and a sample of its members."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from clew.audiences.definitions import AudienceDef, Definition, DefinitionError
from clew.audiences.engine import AUDIENCES
from clew.audiences.repository import document, kind_of
from clew.audiences.status import backfill_state
from clew.console._charts import line
from clew.console._kit import BASE, ConsoleKit
from clew.console._session import Session
from clew.lake.query import QueryError
from clew.sources import PROFILES

PATH = f"{BASE}/audiences"
SAMPLE = 20
# Profiles an audience's page counts in the serving store at most; past that, the lake counts.
SCAN_LIMIT = 10_000
_QUERY_TIMEOUT_S = 10.0
_SCAN_PAGE = 1000
# The buckets a history is drawn in: the finest that keeps the chart under _MAX_POINTS.
_UNITS = (("minute", 60), ("hour", 3600), ("day", 86_400), ("week", 7 * 86_400))
_MAX_POINTS = 240


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _rows(kit: ConsoleKit, query: str, max_rows: int = 10_000) -> list[tuple[Any, ...]]:
    """``query``'s rows; none while the lake has no such table yet."""
    try:
        return kit.ctx.lake.sql(query, max_rows=max_rows, timeout_s=_QUERY_TIMEOUT_S).rows
    except QueryError:
        return []


def _summary(definition: Definition) -> str:
    """One line saying what the definition computes (the page shows it whole)."""
    source = definition.source
    if isinstance(definition, AudienceDef):
        return str(source.get("description") or "")
    what = f"{source.get('kind')}"
    if source.get("property"):
        what += f"({source['property']})"
    event = source.get("event")
    what += f" of {event if event not in (None, '*') else 'any event'}"
    if source.get("window"):
        what += f" over {source['window']}"
    return what


def _lake_sizes(kit: ConsoleKit) -> dict[str, int]:
    """Every audience's size as the lake's ``audience_members`` view has it (it lags the
    serving store by the lake's flush interval)."""
    rows = _rows(kit, "SELECT audience, count(*) FROM audience_members GROUP BY 1")
    return {str(a): int(n) for a, n in rows}


def _listing(kit: ConsoleKit) -> dict[str, Any]:
    try:
        definitions = kit.ctx.audiences.catalog().definitions()
    except DefinitionError as exc:
        return {"definitions": [], "problem": str(exc)}
    sizes = _lake_sizes(kit)
    return {
        "problem": None,
        "definitions": [
            {
                "name": d.name,
                "kind": kind_of(d),
                "summary": _summary(d),
                "size": sizes.get(d.name, 0) if isinstance(d, AudienceDef) else None,
                "backfill": backfill_state(kit.ctx.profiles, d),
            }
            for d in definitions
        ],
    }


def _members(kit: ConsoleKit, name: str) -> tuple[int, list[str], str]:
    """The audience's size now, a few members and where they were counted: the serving store
    (one pass over every profile, as ``clew audiences size`` makes) while it holds at most
    :data:`SCAN_LIMIT` profiles, else the lake, whose ``audience_members`` view answers at any
    size a moment behind."""
    size = 0
    sample: list[str] = []
    after: str | None = None
    for _ in range(SCAN_LIMIT // _SCAN_PAGE):
        page = kit.ctx.profiles.scan(after, _SCAN_PAGE)
        for profile in page:
            members = profile.computed.get(AUDIENCES)
            if isinstance(members, list) and name in members:
                size += 1
                if len(sample) < SAMPLE:
                    sample.append(profile.profile_id)
        if len(page) < _SCAN_PAGE:
            return size, sample, "serving store"
        after = page[-1].profile_id
    where = f"FROM audience_members WHERE audience = {_sql_text(name)}"
    count = _rows(kit, f"SELECT count(*) {where}")
    rows = _rows(kit, f"SELECT profile_id {where} ORDER BY entered_at DESC", SAMPLE)
    return (int(count[0][0]) if count else 0), [str(r[0]) for r in rows], "lake"


def _unit(first: datetime, last: datetime) -> str:
    span = (last - first).total_seconds()
    return next((u for u, s in _UNITS if span / s <= _MAX_POINTS), _UNITS[-1][0])


def _history(kit: ConsoleKit, name: str) -> dict[str, Any] | None:
    """The audience's size after each bucket of its change history (entries minus exits,
    counted from its first change), or None before anything changed."""
    where = f"FROM audience_changes WHERE audience = {_sql_text(name)}"
    span = _rows(kit, f"SELECT min(changed_at), max(changed_at) {where}")
    if not span or span[0][0] is None:
        return None
    first, last = span[0]
    unit = _unit(first, last)
    rows = _rows(
        kit,
        f"SELECT date_trunc('{unit}', changed_at) AS at, "
        "sum(CASE kind WHEN 'audience_entered' THEN 1 WHEN 'audience_exited' THEN -1 ELSE 0 END) "
        f"{where} GROUP BY 1 ORDER BY 1",
    )
    labels: list[str] = []
    sizes: list[float] = []
    size = 0
    shape = "%Y-%m-%d" if unit in ("day", "week") else "%Y-%m-%d %H:%M"
    for at, delta in rows:
        size += int(delta)
        labels.append(at.astimezone(UTC).strftime(shape))
        sizes.append(size)
    if len(sizes) == 1:
        # One bucket draws no line: start it from nothing.
        labels.insert(0, "")
        sizes.insert(0, 0)
    return {"chart": line(labels, sizes, f"size of {name} by {unit}"), "unit": unit}


def _trait_values(kit: ConsoleKit, name: str) -> tuple[int, list[tuple[str, str]]]:
    """How many profiles hold the computed trait (in the lake), and a few of their values."""
    where = f"FROM computed_traits WHERE trait = {_sql_text(name)}"
    count = _rows(kit, f"SELECT count(*) {where}")
    sample = _rows(kit, f"SELECT profile_id, value {where} ORDER BY changed_at DESC", SAMPLE)
    return (int(count[0][0]) if count else 0), [(str(p), str(v)) for p, v in sample]


def _detail(kit: ConsoleKit, name: str) -> dict[str, Any] | None:
    try:
        definition = kit.ctx.audiences.get(name)
    except DefinitionError as exc:
        return {"name": name, "problem": str(exc)}
    if definition is None:
        return None
    doc = json.loads(json.dumps(document(definition), default=str))
    values: dict[str, Any] = {
        "name": name,
        "problem": None,
        "kind": kind_of(definition),
        "fingerprint": definition.fingerprint,
        "yaml": yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
        "backfill": backfill_state(kit.ctx.profiles, definition),
    }
    if isinstance(definition, AudienceDef):
        values["size"], values["members"], values["counted_in"] = _members(kit, name)
        values["history"] = _history(kit, name)
    else:
        values["holders"], values["values"] = _trait_values(kit, name)
    return values


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    async def listing(request: Request, session: Session) -> Response:
        values = await run_in_threadpool(_listing, kit)
        return kit.render(request, "audiences.html", session, **values)

    async def detail(request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        values = await run_in_threadpool(_detail, kit, name)
        if values is None:
            what = f"trait or audience named {name!r}"
            return kit.render(request, "missing.html", session, 404, what=what, back=PATH)
        return kit.render(request, "audience.html", session, **values)

    return [
        Route(PATH, kit.page(PROFILES, listing), methods=["GET"]),
        Route(PATH + "/{name}", kit.page(PROFILES, detail), methods=["GET"]),
    ]
