"""Admin API for tracking plans and the schema registry (access token with the `admin` scope).

- ``GET  /v1/admin/sources/{source}/schemas`` — subjects with their latest version
- ``GET  /v1/admin/sources/{source}/schemas/{subject}/versions/{version}`` — one schema
  (``version``: a number, a SchemaVer such as ``1-0-2``, or ``latest``)
- ``POST /v1/admin/sources/{source}/plan`` — publish a plan (409 with every breaking change
  when it is refused)
- ``POST /v1/admin/sources/{source}/plan/check`` — what publishing would refuse (dry run)

A plan body: ``{"enforcement": "block_violations", "compatibility": "BACKWARD",
"subjects": [{"subject": "track:Order Completed", "schema": {…}, "compatibility": null}]}``.
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clew.api._auth import error, token_guard
from clew.sources import ADMIN, Catalog

if TYPE_CHECKING:
    from clew.config import Settings
    from clew.schema import SchemaRegistry


def _change(subject: str, c: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "path": c.path,
        "kind": str(c.kind.value if hasattr(c.kind, "value") else c.kind),
        "message": c.message,
    }


def _version(v: Any) -> dict[str, Any]:
    return {
        "subject": v.subject,
        "version": v.version,
        "schemaver": str(v.schemaver),
        "schema": v.schema,
        "created_at": v.created_at,
    }


def admin_routes(catalog: Catalog, settings: Settings) -> list[Route]:
    """The routes over the deployment's schema registry, for ``Starlette(routes=…)``;
    each needs an access token with the ``admin`` scope."""
    guarded = token_guard(catalog, ADMIN)
    base = "/v1/admin/sources/{source}"
    return [
        Route(f"{base}/schemas", guarded(partial(list_subjects, settings)), methods=["GET"]),
        Route(
            f"{base}/schemas/{{subject}}/versions/{{version}}",
            guarded(partial(get_version, settings)),
            methods=["GET"],
        ),
        Route(f"{base}/plan", guarded(partial(publish, settings)), methods=["POST"]),
        Route(f"{base}/plan/check", guarded(partial(check, settings)), methods=["POST"]),
    ]


def _registry(settings: Settings) -> SchemaRegistry:
    from clew.schema import SchemaRegistry

    return SchemaRegistry.open(settings)


async def list_subjects(settings: Settings, request: Request) -> Response:
    """``GET …/schemas``: the source's plan settings and every subject, retired ones too."""
    source = request.path_params["source"]
    return JSONResponse(await run_in_threadpool(_subjects, settings, source))


def _subjects(config: Settings, source: str) -> dict[str, Any]:
    with _registry(config) as reg:
        settings = reg.settings(source)
        return {
            "source": source,
            "enforcement": settings.enforcement.value,
            "compatibility": settings.compatibility.value,
            "subjects": [
                {
                    "subject": i.subject,
                    "compatibility": i.compatibility.value,
                    "active": i.active,
                    "versions": i.versions,
                    "latest": _version(i.latest),
                }
                for i in reg.subjects(source, include_retired=True)
            ],
        }


async def get_version(settings: Settings, request: Request) -> Response:
    """``GET …/schemas/{subject}/versions/{version}``: one schema, 404 when there is none."""
    from clew.schema import SchemaError

    p = request.path_params
    raw = p["version"]
    version: int | str = int(raw) if raw.isdigit() else raw

    def run() -> Any:
        with _registry(settings) as reg:
            return reg.get(p["source"], p["subject"], version)

    try:
        return JSONResponse(_version(await run_in_threadpool(run)))
    except SchemaError as e:
        return error(404, "schema_not_found", str(e))


async def _parse_plan(request: Request) -> tuple[str, Any, dict[str, Any]] | Response:
    """The source, subject updates and plan options of a plan request, or the 400."""
    from clew.schema import Compatibility, Enforcement, SubjectUpdate

    try:
        body = json.loads(await request.body())
        updates = [
            SubjectUpdate(
                s["subject"],
                s["schema"],
                Compatibility.parse(s["compatibility"]) if s.get("compatibility") else None,
            )
            for s in body["subjects"]
        ]
        options: dict[str, Any] = {}
        if body.get("enforcement"):
            options["enforcement"] = Enforcement(body["enforcement"])
        if body.get("compatibility"):
            options["compatibility"] = Compatibility.parse(body["compatibility"])
    except (ValueError, KeyError, TypeError) as e:
        return error(400, "invalid_plan", f"the plan body is not valid: {e}")
    return request.path_params["source"], updates, options


async def publish(settings: Settings, request: Request) -> Response:
    """``POST …/plan``: publish a plan; 409 with every breaking change when it is refused."""
    from clew.schema import IncompatibleSchemaError, SchemaError

    parsed = await _parse_plan(request)
    if isinstance(parsed, Response):
        return parsed
    source, updates, options = parsed

    def run() -> Any:
        with _registry(settings) as reg:
            return reg.publish_all(source, updates, retire_missing=True, **options)

    try:
        result = await run_in_threadpool(run)
    except IncompatibleSchemaError as e:
        return JSONResponse(
            {
                "code": "incompatible_schema",
                "message": f"{len(e.changes)} breaking change(s); nothing was published",
                "changes": [_change(s, c) for s, c in e.changes],
            },
            status_code=409,
        )
    except SchemaError as e:
        return error(400, "invalid_schema", str(e))
    return JSONResponse(
        {
            "revision": result.settings.revision,
            "published": [{**_version(p.version), "created": p.created} for p in result.published],
            "retired": list(result.retired),
        }
    )


async def check(settings: Settings, request: Request) -> Response:
    """``POST …/plan/check``: what publishing the plan would refuse (a dry run)."""
    from clew.schema import SchemaError

    parsed = await _parse_plan(request)
    if isinstance(parsed, Response):
        return parsed
    source, updates, options = parsed

    def run() -> Any:
        with _registry(settings) as reg:
            return reg.check_all(source, updates, compatibility=options.get("compatibility"))

    try:
        problems = await run_in_threadpool(run)
    except SchemaError as e:
        return error(400, "invalid_schema", str(e))
    return JSONResponse(
        {"compatible": not problems, "changes": [_change(s, c) for s, c in problems]}
    )
