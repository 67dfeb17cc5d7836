"""Admin API for data-subject requests (access token with the `privacy` scope); see docs/privacy.md.

- ``POST /v1/privacy/requests`` — queue a request: ``{"type": "delete", "identifier":
  "email:ada@x.test", "since": ISO?, "until": ISO?}`` → 202 ``{"id", "status"}``. Segment's
  regulation shape is accepted too: ``{"regulationType": "SUPPRESS_WITH_DELETE",
  "subjectType": "USER_ID", "subjectIds": [...]}`` → 202 ``{"data": {"regulateId"},
  "requests": [{"id", "status"}, ...]}`` (one request per subject id); 400 ``{"code",
  "message"}`` for a request that cannot be run
- ``GET /v1/privacy/requests`` — the newest requests (``?status=``, ``?limit=`` up to 1000)
- ``GET /v1/privacy/requests/{id}`` — one request with its audit record; 404 if unknown

No response ever holds the raw identifier: requests are shown by id type and salted hash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clew.api._auth import error, token_guard
from clew.identity.identifiers import ANONYMOUS_ID, USER_ID
from clew.privacy.requests import (
    STATUSES,
    InvalidRequestError,
    PrivacyRequest,
    RequestStore,
    parse_subject_identifier,
)
from clew.sources import PRIVACY, Catalog

# Segment's regulation types Clew can honour, and its subject types.
SEGMENT_TYPES = {
    "SUPPRESS_ONLY": "suppress",
    "UNSUPPRESS": "unsuppress",
    "DELETE_ONLY": "delete",
    "SUPPRESS_WITH_DELETE": "suppress_with_delete",
}
SEGMENT_SUBJECTS = {"USER_ID": USER_ID, "ANONYMOUS_ID": ANONYMOUS_ID}
MAX_SUBJECTS = 1000


def privacy_routes(
    catalog: Catalog, requests: RequestStore, wake: Callable[[], None] | None = None
) -> list[Route]:
    """The routes, for ``Starlette(routes=…)``; ``wake`` tells the runner a request is
    waiting (otherwise it finds it at its next poll)."""

    guarded = token_guard(catalog, PRIVACY)

    async def create(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "invalid_json", 'send {"type": …, "identifier": "id_type:value"}')
        if not isinstance(body, dict):
            return error(400, "invalid_json", "the body must be a JSON object")
        token = request.headers["authorization"].partition(" ")[2].strip()
        requested_by = f"token:{catalog.token_name(token) or '?'}"
        try:
            if "regulationType" in body:
                wanted = _segment_requests(body)
            else:
                wanted = [_native_request(body)]
        except InvalidRequestError as exc:
            return error(400, exc.code, str(exc))

        def run() -> list[PrivacyRequest]:
            return [
                requests.create(
                    kind,
                    identifier,
                    requested_by=requested_by,
                    since=times.get("since"),
                    until=times.get("until"),
                )
                for kind, identifier, times in wanted
            ]

        try:
            created = await run_in_threadpool(run)
        except InvalidRequestError as exc:
            return error(400, exc.code, str(exc))
        if wake is not None:
            wake()
        if "regulationType" in body:
            return JSONResponse(
                {
                    "data": {"regulateId": created[0].id},
                    "requests": [{"id": r.id, "status": r.status} for r in created],
                },
                status_code=202,
            )
        return JSONResponse({"id": created[0].id, "status": created[0].status}, status_code=202)

    async def get_one(request: Request) -> Response:
        found = await run_in_threadpool(requests.get, request.path_params["id"])
        if found is None:
            return error(404, "unknown_request", f"no privacy request {request.path_params['id']}")
        return JSONResponse(found.public())

    async def list_all(request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            return error(400, "invalid_status", f"status must be one of {', '.join(STATUSES)}")
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return error(400, "invalid_limit", "limit must be a number from 1 to 1000")
        found = await run_in_threadpool(requests.recent, limit, status)
        return JSONResponse({"requests": [r.public() for r in found]})

    base = "/v1/privacy/requests"
    return [
        Route(base, guarded(create), methods=["POST"]),
        Route(base, guarded(list_all), methods=["GET"]),
        Route(f"{base}/{{id}}", guarded(get_one), methods=["GET"]),
    ]


_Wanted = tuple[str, str, dict[str, Any]]


def _native_request(body: dict[str, Any]) -> _Wanted:
    kind, identifier = body.get("type"), body.get("identifier")
    if not isinstance(kind, str):
        raise InvalidRequestError(
            "invalid_type", "type must be suppress, unsuppress, delete or suppress_with_delete"
        )
    if not isinstance(identifier, str):
        raise InvalidRequestError(
            "invalid_identifier", 'identifier must be a string such as "email:ada@shop.test"'
        )
    times = {k: body.get(k) for k in ("since", "until")}
    for name, value in times.items():
        if value is not None and not isinstance(value, str):
            raise InvalidRequestError("invalid_time", f"{name} must be an ISO-8601 string")
    parse_subject_identifier(identifier)
    return kind, identifier, times


def _segment_requests(body: dict[str, Any]) -> list[_Wanted]:
    kind = SEGMENT_TYPES.get(str(body.get("regulationType")))
    if kind is None:
        raise InvalidRequestError(
            "invalid_type", f"regulationType must be one of {', '.join(SEGMENT_TYPES)}"
        )
    id_type = SEGMENT_SUBJECTS.get(str(body.get("subjectType")))
    if id_type is None:
        raise InvalidRequestError(
            "invalid_identifier", f"subjectType must be one of {', '.join(SEGMENT_SUBJECTS)}"
        )
    ids = body.get("subjectIds")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_SUBJECTS
        or not all(isinstance(i, str) and i.strip() for i in ids)
    ):
        raise InvalidRequestError(
            "invalid_identifier",
            f"subjectIds must be a list of 1 to {MAX_SUBJECTS} non-empty strings",
        )
    wanted: list[_Wanted] = [(kind, f"{id_type}:{i}", {}) for i in ids]
    for _, identifier, _ in wanted:
        parse_subject_identifier(identifier)
    return wanted
