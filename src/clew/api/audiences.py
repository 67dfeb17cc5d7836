"""Admin API for computed-trait and audience definitions (access token with the `admin` scope); see
docs/audiences.md.

- ``GET    /v1/admin/audiences`` — every definition: type, name, fingerprint, source
- ``GET    /v1/admin/audiences/{name}`` — one definition, its backfill state and, for an
  audience, its size
- ``PUT    /v1/admin/audiences/{name}`` — add or replace one definition: a JSON body with
  ``type`` (``trait`` or ``audience``) and its fields (``name`` may be left out); 400
  ``invalid_definition`` when it cannot be used
- ``DELETE /v1/admin/audiences/{name}`` — 204; 404 if unknown; 409 while an audience uses it

A running server picks up every change within about a second (the profiles stage polls the
definitions folder), the same as after ``clew audiences push``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clew.api._auth import error, token_guard
from clew.audiences.definitions import AudienceDef, Definition, DefinitionError, parse_document
from clew.audiences.repository import (
    DefinitionInUseError,
    DefinitionRepository,
    UnknownDefinitionError,
    kind_of,
)
from clew.audiences.status import audience_size, backfill_state
from clew.sources import ADMIN, Catalog
from clew.store.base import ProfileStore


@dataclass(frozen=True, slots=True)
class AudienceContext:
    """What the handlers read and write: the definitions, and the profiles for sizes and
    backfill states (``None``: left out)."""

    repository: DefinitionRepository
    profiles: ProfileStore | None


def audience_routes(
    catalog: Catalog, repository: DefinitionRepository, profiles: ProfileStore | None
) -> list[Route]:
    """The routes, for ``Starlette(routes=…)``. ``profiles`` (None: sizes and backfill states
    are left out) is read in the thread pool, as a size reads every profile."""
    guarded = token_guard(catalog, ADMIN)
    ctx = AudienceContext(repository, profiles)
    base = "/v1/admin/audiences"
    return [
        Route(base, guarded(partial(list_all, ctx)), methods=["GET"]),
        Route(f"{base}/{{name}}", guarded(partial(get_one, ctx)), methods=["GET"]),
        Route(f"{base}/{{name}}", guarded(partial(put, ctx)), methods=["PUT"]),
        Route(f"{base}/{{name}}", guarded(partial(delete, ctx)), methods=["DELETE"]),
    ]


def describe(ctx: AudienceContext, definition: Definition, size: bool = False) -> dict[str, Any]:
    """A definition as the API shows it; with ``size``, an audience's size too."""
    out: dict[str, Any] = {
        "type": kind_of(definition),
        "name": definition.name,
        "fingerprint": definition.fingerprint,
        "source": dict(definition.source),
    }
    if ctx.profiles is not None:
        out["backfilled_at"] = backfill_state(ctx.profiles, definition)
        if size and isinstance(definition, AudienceDef):
            out["size"] = audience_size(ctx.profiles, definition.name)
    return out


def _respond(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, default=str),
        status_code=status,
        media_type="application/json",
    )


async def list_all(ctx: AudienceContext, request: Request) -> Response:
    """``GET /v1/admin/audiences``."""

    def run() -> list[dict[str, Any]]:
        return [describe(ctx, d) for d in ctx.repository.catalog().definitions()]

    try:
        return _respond({"definitions": await run_in_threadpool(run)})
    except DefinitionError as exc:
        return error(500, "invalid_stored_definition", str(exc))


async def get_one(ctx: AudienceContext, request: Request) -> Response:
    """``GET /v1/admin/audiences/{name}``."""
    name = request.path_params["name"]

    def run() -> dict[str, Any] | None:
        found = ctx.repository.get(name)
        return None if found is None else describe(ctx, found, size=True)

    try:
        body = await run_in_threadpool(run)
    except DefinitionError as exc:
        return error(500, "invalid_stored_definition", str(exc))
    if body is None:
        return error(404, "unknown_definition", str(UnknownDefinitionError(name)))
    return _respond(body)


async def put(ctx: AudienceContext, request: Request) -> Response:
    """``PUT /v1/admin/audiences/{name}``."""
    name = request.path_params["name"]
    try:
        body = json.loads(await request.body())
    except ValueError:
        return error(400, "invalid_json", "send one definition as a JSON object")
    try:
        definition = _parse(name, body)
        changed = await run_in_threadpool(ctx.repository.push, [definition])
    except DefinitionError as exc:
        return error(400, "invalid_definition", str(exc))
    return _respond({**describe(ctx, definition), "changed": bool(changed)})


async def delete(ctx: AudienceContext, request: Request) -> Response:
    """``DELETE /v1/admin/audiences/{name}``."""
    name = request.path_params["name"]
    try:
        await run_in_threadpool(ctx.repository.remove, name)
    except UnknownDefinitionError as exc:
        return error(404, "unknown_definition", str(exc))
    except DefinitionInUseError as exc:
        return error(409, "definition_in_use", str(exc))
    return Response(status_code=204)


def _parse(name: str, body: Any) -> Definition:
    """The one definition in a PUT body; its name is the path's."""
    if not isinstance(body, dict):
        raise DefinitionError("send one definition as a JSON object")
    if body.get("type") not in ("trait", "audience"):
        raise DefinitionError("the body needs 'type': 'trait' or 'audience'")
    if body.get("name", name) != name:
        raise DefinitionError(
            f"the body names {body['name']!r} but the path {name!r}; leave 'name' out or make "
            "them the same"
        )
    rest = {k: v for k, v in body.items() if k not in ("type", "name")}
    (definition,) = parse_document({"type": body["type"], "name": name, **rest})
    return definition
