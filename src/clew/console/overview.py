"""The overview: events per minute by source and type, each stage's health and lag, the
dead-letter queue by reason, volume alerts, and deliveries by outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from clew.console._charts import stacked_bars
from clew.console._kit import BASE, ConsoleKit, first_section, to_login
from clew.console._session import Session
from clew.destinations.status import destination_figures
from clew.lake.query import QueryError
from clew.monitor import read_status
from clew.sources import METRICS
from clew.topics import STAGE_TOPICS

WINDOW_MINUTES = 60
_QUERY_TIMEOUT_S = 10.0


def _rows(kit: ConsoleKit, query: str) -> list[tuple[Any, ...]]:
    """``query``'s rows, none when the lake has no such table yet."""
    try:
        return kit.ctx.lake.sql(query, max_rows=10_000, timeout_s=_QUERY_TIMEOUT_S).rows
    except QueryError:
        return []


def _minutes(now: datetime) -> list[datetime]:
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    return [start + timedelta(minutes=i) for i in range(WINDOW_MINUTES)]


def _traffic(kit: ConsoleKit) -> dict[str, Any]:
    now = datetime.now(UTC)
    minutes = _minutes(now)
    since = minutes[0].strftime("%Y-%m-%d %H:%M:%S")
    rows = _rows(
        kit,
        "SELECT date_trunc('minute', received_at) AS minute, source_id, type, count(*) "
        f"FROM events WHERE received_at >= TIMESTAMPTZ '{since}+00' "
        "GROUP BY ALL",
    )
    names = {s.id: s.name for s in kit.ctx.catalog.sources()}
    index = {m: i for i, m in enumerate(minutes)}
    by_type: dict[str, list[float]] = {}
    by_source: dict[tuple[str, str], int] = {}
    for minute, source_id, kind, n in rows:
        at = minute.astimezone(UTC).replace(tzinfo=UTC)
        kind = kind or "?"
        if at in index:
            by_type.setdefault(kind, [0.0] * len(minutes))[index[at]] += n
        key = (names.get(source_id, source_id or "?"), kind)
        by_source[key] = by_source.get(key, 0) + n
    labels = [m.strftime("%H:%M") for m in minutes]
    return {
        "chart": stacked_bars(labels, dict(sorted(by_type.items())), "events per minute"),
        "by_source": sorted(by_source.items()),
        "total": sum(by_source.values()),
    }


def _stages(kit: ConsoleKit) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    health = kit.ctx.health()
    stages = []
    for name, state in sorted(health.get("stages", {}).items()):
        lag = sum(kit.ctx.log.lag(name, topic).total for topic in STAGE_TOPICS.get(name, ()))
        stages.append({"name": name, "lag": lag, **state})
    return health, stages


def _overview(kit: ConsoleKit) -> dict[str, Any]:
    health, stages = _stages(kit)
    dlq = _rows(kit, "SELECT reason, count(*) FROM dlq GROUP BY reason ORDER BY 2 DESC, 1")
    monitor = read_status(kit.ctx.settings.monitor_path)
    return {
        "traffic": _traffic(kit),
        "health": health,
        "stages": stages,
        "dlq": dlq,
        "monitor": monitor,
        "destinations": destination_figures(kit.ctx.settings.outbox_path, kit.ctx.destinations),
    }


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    async def overview(request: Request, session: Session) -> Response:
        values = await run_in_threadpool(_overview, kit)
        return kit.render(request, "overview.html", session, **values)

    guarded = kit.page(METRICS, overview)

    async def home(request: Request) -> Response:
        # The console's front door: a token without the overview's scope lands on the first
        # section it may see instead of a refusal.
        session = kit.sessions.read(request)
        if session is None:
            return to_login(request)
        if not session.allows(METRICS):
            target = first_section(session.token.scopes)
            if target != BASE:
                return RedirectResponse(target, status_code=303)
        return await guarded(request)

    return [Route(BASE, home, methods=["GET"], name="console_overview")]
