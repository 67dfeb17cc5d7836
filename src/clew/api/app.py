"""The HTTP APIs other than the Tracking API: health, metrics, read-only SQL, the Admin API and
the Profile API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from clew.api._auth import check_token, error, holds_scope
from clew.api.admin import admin_routes
from clew.api.audiences import audience_routes
from clew.api.privacy import privacy_routes
from clew.api.profiles import profile_routes
from clew.api.sql import SqlRunner
from clew.audiences.repository import DefinitionRepository
from clew.config import Settings, SqlSettings
from clew.lake.query import Lake
from clew.log.base import Log
from clew.privacy.requests import RequestStore
from clew.sources import METRICS, SQL, Catalog
from clew.store.base import ProfileStore


def public_health(status: dict[str, Any]) -> dict[str, Any]:
    """What ``/health`` tells a caller without a ``metrics`` token when tokens are required:
    whether Clew runs and its overall status, nothing naming a stage, source or reason."""
    return {k: status[k] for k in ("ok", "status") if k in status}


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the health, metrics and SQL endpoints need. ``metrics_token``:
    ``metrics.require_token``."""

    catalog: Catalog
    metrics: Callable[[], str]
    health: Callable[[], dict[str, Any]]
    sql_runner: SqlRunner
    metrics_token: bool = False


def build_api(
    catalog: Catalog,
    lake: Lake,
    metrics: Callable[[], str],
    health: Callable[[], dict[str, Any]],
    settings: Settings,
    profiles: ProfileStore | None = None,
    audiences: DefinitionRepository | None = None,
    privacy: RequestStore | None = None,
    privacy_wake: Callable[[], None] | None = None,
    *,
    offload_profiles: bool = False,
    sql: SqlSettings | None = None,
    metrics_token: bool = False,
    extra_routes: Sequence[BaseRoute] = (),
    log: Log | None = None,
) -> Starlette:
    """The HTTP API. ``offload_profiles``: run Profile API reads in the thread pool (a store
    whose reads are network round trips, such as Redis; see ``profile_routes``).

    ``metrics_token`` (``metrics.require_token``): ``/metrics`` needs a ``metrics``-scoped
    token, and ``/health`` answers only ``ok`` and ``status`` without one. ``extra_routes``:
    the layers above the API (the browser edge, the console) mounted beside it. ``log``: the
    log the stages read, for the Profile API's ``after`` (read your writes)."""
    sql_runner = SqlRunner(lake, sql or SqlSettings())
    ctx = ApiContext(catalog, metrics, health, sql_runner, metrics_token)
    api = Starlette(
        routes=[
            Route(
                "/health", partial(health_endpoint, ctx), methods=["GET"], name="health_endpoint"
            ),
            Route(
                "/metrics", partial(metrics_endpoint, ctx), methods=["GET"], name="metrics_endpoint"
            ),
            Route("/v1/sql", partial(sql_endpoint, ctx), methods=["POST"], name="sql_endpoint"),
            *admin_routes(catalog, settings),
            *(audience_routes(catalog, audiences, profiles) if audiences is not None else []),
            *(
                profile_routes(profiles, catalog, offload=offload_profiles, log=log)
                if profiles is not None
                else []
            ),
            *(privacy_routes(catalog, privacy, privacy_wake) if privacy is not None else []),
            *extra_routes,
        ],
        exception_handlers={404: not_found, 405: method_not_allowed},
        lifespan=_lifespan,
    )
    api.state.sql_runner = sql_runner
    return api


async def health_endpoint(ctx: ApiContext, request: Request) -> Response:
    """``GET /health``: 503 unless ``ok``; only :func:`public_health` without a ``metrics``
    token when tokens are required."""
    status = ctx.health()
    code = 200 if status.get("ok") else 503
    if ctx.metrics_token and not holds_scope(request, ctx.catalog, METRICS):
        status = public_health(status)
    return JSONResponse(status, status_code=code)


async def metrics_endpoint(ctx: ApiContext, request: Request) -> Response:
    """``GET /metrics``: the Prometheus text format."""
    if ctx.metrics_token:
        refused = check_token(request, ctx.catalog, METRICS)
        if refused is not None:
            return refused
    return PlainTextResponse(ctx.metrics(), media_type="text/plain; version=0.0.4")


async def sql_endpoint(ctx: ApiContext, request: Request) -> Response:
    """``POST /v1/sql``: ``{"query": "SELECT …", "include_cold": false}`` over the lake."""
    refused = check_token(request, ctx.catalog, SQL)
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
    return await ctx.sql_runner.answer(request, query, include_cold)


async def not_found(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", f"no such endpoint: {request.url.path}")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return error(405, "method_not_allowed", f"{request.method} is not allowed here")


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """Closes the SQL runner (``app.state.sql_runner``) when the app stops."""
    yield
    app.state.sql_runner.close()
