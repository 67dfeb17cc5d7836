"""Data quality: each source's tracking plan with its subjects and their versions (a diff
between any two), the dead-letter queue (filtered, paged, each row with its payload and
violations, replayed against the current plan from a confirmed form) and the volume monitors
with their baselines."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from clew.console._charts import stacked_bars
from clew.console._kit import BASE, ConsoleKit
from clew.console._monitors import recent_hours, series_rows
from clew.console._session import Session
from clew.dlq.ledger import ReplayLedger
from clew.dlq.replay import ReplayError, ReplayReport, replay_dlq
from clew.dlq.snapshot import DlqFilter, DlqRow, DlqSnapshot
from clew.monitor import MonitorPolicy, read_status
from clew.schema import SchemaError, SchemaRegistry
from clew.schema.report import render_diff
from clew.sources import ADMIN

PATH = f"{BASE}/quality"
PAGE_SIZE = 50
# Pages past this many rows are not offered: narrow the filters instead.
MAX_OFFSET = 10_000
PAYLOAD_CHARS = 20_000
REASONS = (
    "schema_violation",
    "unplanned_event",
    "invalid_json",
    "size_violation",
    "no_identity",
    "protocol_violation",
    "stage_failure",
)


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _registry(kit: ConsoleKit) -> SchemaRegistry | None:
    return SchemaRegistry.open_existing(kit.ctx.settings)


def _source_names(kit: ConsoleKit) -> dict[str, str]:
    """Every source's name by its id, removed ones too (their dead letters still name them)."""
    return {s.id: s.name for s in kit.ctx.catalog.sources()}


def _plans(kit: ConsoleKit) -> list[dict[str, Any]]:
    registry = _registry(kit)
    if registry is None:
        return []
    with registry:
        return [
            {
                "source": source,
                "settings": registry.settings(source),
                "subjects": registry.subjects(source, include_retired=True),
            }
            for source in registry.sources()
        ]


def _overview(kit: ConsoleKit, series_id: int | None) -> dict[str, Any]:
    settings = kit.ctx.settings
    now = datetime.now(UTC)
    series, total = series_rows(
        settings.monitor_path, MonitorPolicy.from_settings(settings.monitor), now
    )
    chart = None
    if series_id is not None:
        hours = recent_hours(settings.monitor_path, series_id, now)
        if hours is not None:
            labels = hours.pop("labels")
            chart = stacked_bars(labels, hours, "events per hour")
    dlq = _dlq_reasons(kit)
    return {
        "plans": _plans(kit),
        "names": _source_names(kit),
        "monitor": read_status(settings.monitor_path),
        "series": series,
        "series_total": total,
        "series_id": series_id,
        "chart": chart,
        "dlq": dlq,
        "utc": _utc,
    }


def _dlq_reasons(kit: ConsoleKit) -> list[tuple[str, int]]:
    """Dead letters not yet replayed by reason, most first."""
    ledger = ReplayLedger(kit.ctx.settings.state_path)
    try:
        with DlqSnapshot(kit.ctx.settings.lake_location, ledger) as snapshot:
            stats = snapshot.stats(DlqFilter())
    finally:
        ledger.close()
    by_reason: dict[str, int] = {}
    for reason, _, _, n in stats.by_kind:
        by_reason[reason] = by_reason.get(reason, 0) + n
    return sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))


def _schema(kit: ConsoleKit, source: str, subject: str, old: str, new: str) -> dict[str, Any]:
    registry = _registry(kit)
    if registry is None:
        raise SchemaError("no tracking plan has been pushed yet")
    with registry:
        versions = registry.versions(source, subject)
        b = registry.get(source, subject, int(new) if new.isdigit() else new)
        a = registry.get(source, subject, int(old) if old.isdigit() else old) if old else None
    if a is None and len(versions) > 1 and b.version > 1:
        a = next(v for v in versions if v.version == b.version - 1)
    return {
        "source": source,
        "subject": subject,
        "versions": versions[::-1],
        "new": b,
        "old": a,
        "schema": json.dumps(b.schema, indent=2, sort_keys=True),
        "diff": render_diff(a, b) if a is not None else None,
        "utc": _utc,
    }


def _filters(query: Mapping[str, str], names: dict[str, str]) -> tuple[DlqFilter, dict[str, Any]]:
    """The DLQ filter a page's query (or a replay form) asks for, and the values it echoes."""
    reason = query.get("reason") or ""
    source = query.get("source") or ""
    event = (query.get("event") or "").strip()
    include = query.get("replayed") == "1"
    f = DlqFilter(
        reasons=(reason,) if reason else (),
        source_id=source if source in names else None,
        event=event or None,
        include_replayed=include,
    )
    shown = {"reason": reason, "source": f.source_id or "", "event": event, "replayed": include}
    return f, shown


def _page_of(kit: ConsoleKit, f: DlqFilter, offset: int) -> tuple[list[DlqRow], int]:
    """One page of the rows ``f`` selects, newest first, and how many it selects."""
    ledger = ReplayLedger(kit.ctx.settings.state_path)
    try:
        with DlqSnapshot(kit.ctx.settings.lake_location, ledger) as snapshot:
            total = snapshot.count(f)
            rows: list[DlqRow] = []
            limited = replace(f, limit=offset + PAGE_SIZE)
            for batch in snapshot.rows(limited, batch_size=PAGE_SIZE):
                rows.extend(batch)
            return rows[offset:], total
    finally:
        ledger.close()


def _dlq(kit: ConsoleKit, query: Mapping[str, str]) -> dict[str, Any]:
    names = _source_names(kit)
    f, shown = _filters(query, names)
    try:
        offset = min(max(int(query.get("offset", "0")), 0), MAX_OFFSET)
    except ValueError:
        offset = 0
    rows, total = _page_of(kit, f, offset)
    base = {k: v for k, v in {**shown, "replayed": "1" if shown["replayed"] else ""}.items() if v}
    return {
        "rows": [_row(r, names) for r in rows],
        "total": total,
        "offset": offset,
        "page_size": PAGE_SIZE,
        "prev": urlencode({**base, "offset": max(offset - PAGE_SIZE, 0)}) if offset else None,
        "next": urlencode({**base, "offset": offset + PAGE_SIZE})
        if offset + PAGE_SIZE < total and offset + PAGE_SIZE <= MAX_OFFSET
        else None,
        "filters": shown,
        "names": names,
        "reasons": REASONS,
    }


def _row(r: DlqRow, names: dict[str, str]) -> dict[str, Any]:
    try:
        payload = json.dumps(json.loads(r.payload), indent=2, ensure_ascii=False)
    except ValueError:
        payload = r.payload
    if len(payload) > PAYLOAD_CHARS:
        payload = payload[:PAYLOAD_CHARS] + "\n…"
    return {
        "id": r.dlq_id,
        "received": r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
        "source": names.get(r.source_id, r.source_id),
        "reason": r.reason,
        "event": r.event_name or r.event_type or "",
        "message": r.message,
        "message_id": r.message_id,
        "violations": r.violations,
        "schema_versions": r.schema_versions,
        "stage": r.stage,
        "replay": r.replay,
        "replay_of": r.replay_of,
        "payload": payload,
    }


def _replay(kit: ConsoleKit, f: DlqFilter) -> ReplayReport:
    return replay_dlq(kit.ctx.settings, f, log=kit.ctx.log)


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    async def overview(request: Request, session: Session) -> Response:
        raw = request.query_params.get("series", "")
        series_id = int(raw) if raw.isdigit() else None
        values = await run_in_threadpool(_overview, kit, series_id)
        return kit.render(request, "quality.html", session, **values)

    async def schema(request: Request, session: Session) -> Response:
        q = request.query_params
        source, subject = q.get("source", ""), q.get("subject", "")
        try:
            values = await run_in_threadpool(
                _schema, kit, source, subject, q.get("old", ""), q.get("new", "latest")
            )
        except SchemaError as exc:
            return kit.render(request, "missing.html", session, 404, what=str(exc), back=PATH)
        return kit.render(request, "quality_schema.html", session, **values)

    async def dlq(request: Request, session: Session) -> Response:
        values = await run_in_threadpool(_dlq, kit, dict(request.query_params))
        return kit.render(request, "quality_dlq.html", session, report=None, problem=None, **values)

    async def replay(request: Request, session: Session) -> Response:
        form = await request.form()
        query = {k: str(v) for k, v in form.items() if k != "csrf"}
        names = await run_in_threadpool(_source_names, kit)
        f, _ = _filters(query, names)
        at_most = query.pop("limit", "").strip()
        limit = int(at_most) if at_most.isdigit() and int(at_most) > 0 else None
        report: ReplayReport | None = None
        problem: str | None = None
        try:
            chosen = replace(f, include_replayed=False, limit=limit)
            report = await run_in_threadpool(_replay, kit, chosen)
        except ReplayError as exc:
            problem = str(exc)
        values = await run_in_threadpool(_dlq, kit, query)
        status = 200 if problem is None else 409
        return kit.render(
            request, "quality_dlq.html", session, status, report=report, problem=problem, **values
        )

    return [
        Route(PATH, kit.page(ADMIN, overview), methods=["GET"]),
        Route(PATH + "/schema", kit.page(ADMIN, schema), methods=["GET"]),
        Route(PATH + "/dlq", kit.page(ADMIN, dlq), methods=["GET"]),
        Route(PATH + "/dlq/replay", kit.action(ADMIN, replay), methods=["POST"]),
    ]
