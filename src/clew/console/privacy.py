"""Data-subject requests: the newest ones with their status, each one's audit record (what it
did in each store), and a form filing a new delete or suppress request for an identifier,
which the privacy runner of ``clew serve`` picks up at once."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from clew.console._kit import BASE, ConsoleKit
from clew.console._session import Session
from clew.privacy.requests import REQUEST_TYPES, STATUSES, InvalidRequestError
from clew.sources import PRIVACY

PATH = f"{BASE}/privacy"
PAGE_SIZE = 50
# What the form offers, most common first (unsuppress lifts a suppression; the CLI and the
# API file it).
FORM_TYPES = ("delete", "suppress_with_delete", "suppress", "unsuppress")


def _listing(kit: ConsoleKit, status: str | None, limit: int) -> dict[str, Any]:
    found = kit.ctx.privacy.recent(limit + 1, status)
    counts = kit.ctx.privacy.counts()
    return {
        "requests": [r.public() for r in found[:limit]],
        "more": len(found) > limit,
        "limit": limit,
        "status": status or "",
        "statuses": STATUSES,
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "types": FORM_TYPES,
    }


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    async def listing(request: Request, session: Session) -> Response:
        status = request.query_params.get("status") or None
        if status not in (None, *STATUSES):
            status = None
        try:
            limit = min(max(int(request.query_params.get("limit", PAGE_SIZE)), 1), 1000)
        except ValueError:
            limit = PAGE_SIZE
        values = await run_in_threadpool(_listing, kit, status, limit)
        return kit.render(request, "privacy.html", session, problem=None, **values)

    async def detail(request: Request, session: Session) -> Response:
        request_id = request.path_params["request_id"]
        found = await run_in_threadpool(kit.ctx.privacy.get, request_id)
        if found is None:
            what = f"privacy request {request_id!r}"
            return kit.render(request, "missing.html", session, 404, what=what, back=PATH)
        public = found.public()
        audit: dict[str, Any] = public["audit"] or {}
        return kit.render(
            request,
            "privacy_request.html",
            session,
            r=public,
            ended=found.ended,
            stores=(audit.get("erasure") or {}).get("stores", []),
            audit=audit,
        )

    async def refused(request: Request, session: Session, problem: str) -> Response:
        values = await run_in_threadpool(_listing, kit, None, PAGE_SIZE)
        return kit.render(request, "privacy.html", session, 400, problem=problem, **values)

    async def file(request: Request, session: Session) -> Response:
        form = await request.form()
        type_ = str(form.get("type") or "")
        identifier = str(form.get("identifier") or "").strip()
        if type_ not in REQUEST_TYPES:
            return await refused(request, session, f"choose one of {', '.join(FORM_TYPES)}")

        def create() -> str:
            created = kit.ctx.privacy.create(
                type_, identifier, requested_by=f"console:{session.token.name}"
            )
            return created.id

        try:
            request_id = await run_in_threadpool(create)
        except InvalidRequestError as exc:
            return await refused(request, session, str(exc))
        kit.ctx.privacy_wake()
        return RedirectResponse(f"{PATH}/{quote(request_id)}", status_code=303)

    return [
        Route(PATH, kit.page(PRIVACY, listing), methods=["GET"]),
        Route(PATH + "/requests", kit.action(PRIVACY, file), methods=["POST"]),
        Route(PATH + "/{request_id}", kit.page(PRIVACY, detail), methods=["GET"]),
    ]
