"""The HTTP APIs other than the Tracking API: health, metrics, read-only SQL, the Admin API and
the Profile API."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from clew.api._auth import check_token, error
from clew.api.admin import admin_routes
from clew.api.audiences import audience_routes
from clew.api.privacy import privacy_routes
from clew.api.profiles import profile_routes
from clew.audiences.repository import DefinitionRepository
from clew.lake.query import Lake, QueryError
from clew.privacy.requests import RequestStore
from clew.sources import Catalog
from clew.store.base import ProfileStore

MAX_SQL_ROWS = 10_000


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def _rows_json(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [[_jsonable(v) for v in row] for row in rows]


def build_api(
    catalog: Catalog,
    lake: Lake,
    metrics: Callable[[], str],
    health: Callable[[], dict[str, Any]],
    registry_path: Path,
    profiles: ProfileStore | None = None,
    audiences: DefinitionRepository | None = None,
    privacy: RequestStore | None = None,
    privacy_wake: Callable[[], None] | None = None,
    *,
    offload_profiles: bool = False,
) -> Starlette:
    """The HTTP API. ``offload_profiles``: run Profile API reads in the thread pool (a store
    whose reads are network round trips, such as Redis; see ``profile_routes``)."""

    async def health_endpoint(request: Request) -> Response:
        status = health()
        return JSONResponse(status, status_code=200 if status.get("ok") else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(metrics(), media_type="text/plain; version=0.0.4")

    async def sql_endpoint(request: Request) -> Response:
        refused = check_token(request, catalog)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "invalid_json", 'send {"query": "SELECT …"} as JSON')
        query = body.get("query") if isinstance(body, dict) else None
        if not isinstance(query, str) or not query.strip():
            return error(400, "missing_query", 'send {"query": "SELECT …"}')
        include_cold = body.get("include_cold", False)
        if not isinstance(include_cold, bool):
            return error(400, "invalid_include_cold", '"include_cold" must be true or false')
        try:
            result = await run_in_threadpool(lake.sql, query, MAX_SQL_ROWS + 1, include_cold)
        except QueryError as e:
            return error(400, "invalid_query", str(e))
        truncated = len(result.rows) > MAX_SQL_ROWS
        return JSONResponse(
            {
                "columns": result.columns,
                "rows": _rows_json(result.rows[:MAX_SQL_ROWS]),
                "truncated": truncated,
            }
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, "not_found", f"no such endpoint: {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error(405, "method_not_allowed", f"{request.method} is not allowed here")

    return Starlette(
        routes=[
            Route("/health", health_endpoint, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/v1/sql", sql_endpoint, methods=["POST"]),
            *admin_routes(catalog, registry_path),
            *(audience_routes(catalog, audiences, profiles) if audiences is not None else []),
            *(
                profile_routes(profiles, catalog, offload=offload_profiles)
                if profiles is not None
                else []
            ),
            *(privacy_routes(catalog, privacy, privacy_wake) if privacy is not None else []),
        ],
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
