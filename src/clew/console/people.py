"""People: find a person by any identifier and see their profile — identities and how they
were linked, traits, computed traits, audiences, consent and their events — and act on it:
split a wrong merge (scope ``admin``, as ``clew identity split``), delete or suppress them
(scope ``privacy``, a data-subject request run by the privacy runner).
"""

from __future__ import annotations

from functools import partial
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from clew.batch.split import SplitError, SplitResult, parse_split_identifier, split_profile
from clew.console import _people
from clew.console._kit import BASE, ConsoleKit
from clew.console._session import Session
from clew.privacy.requests import InvalidRequestError, PrivacyRequest
from clew.sources import ADMIN, PRIVACY, PROFILES
from clew.store.base import Profile

PEOPLE = f"{BASE}/people"
# What the delete and suppress buttons ask the privacy runner for.
_PRIVACY_ACTIONS = {"delete": "delete", "suppress": "suppress"}


def _profile_url(profile_id: str) -> str:
    return f"{PEOPLE}/{quote(profile_id, safe='')}"


def _subject(kit: ConsoleKit, profile: Profile) -> str:
    """The identifier a privacy request names the person by: the profile's most trusted one
    (the runner resolves it to every identifier of the profile)."""
    rules = kit.ctx.settings.identity.rules
    best = min(
        profile.identities,
        key=lambda e: (rules.priority(e.id_type), e.provenance.time_ms, e.id_type, e.value),
    )
    return f"{best.id_type}:{best.value}"


async def _search(kit: ConsoleKit, request: Request, session: Session) -> Response:
    query = request.query_params.get("q", "")
    error = None
    if query.strip():
        try:
            found = await run_in_threadpool(_people.find, kit.ctx, query)
        except _people.NotFound as exc:
            error = str(exc)
        else:
            return RedirectResponse(_profile_url(found), status_code=303)
    asked: PrivacyRequest | None = None
    request_id = request.query_params.get("request")
    if request_id:
        asked = await run_in_threadpool(kit.ctx.privacy.get, request_id)
    return kit.render(request, "people.html", session, query=query, error=error, asked=asked)


async def _profile(kit: ConsoleKit, request: Request, session: Session) -> Response:
    wanted = request.path_params["profile_id"]
    shown = await run_in_threadpool(_people.view, kit.ctx, wanted)
    if shown is None:
        return kit.render(
            request,
            "people.html",
            session,
            status_code=404,
            query="",
            error=f"no profile has the id {wanted!r} (deleted, or split away)",
            asked=None,
        )
    if shown.profile.profile_id != wanted:
        return RedirectResponse(_profile_url(shown.profile.profile_id), status_code=303)
    return kit.render(
        request,
        "people_profile.html",
        session,
        v=shown,
        can_split=session.allows(ADMIN),
        can_erase=session.allows(PRIVACY),
        subject=_subject(kit, shown.profile) if shown.profile.identities else None,
    )


async def _split(kit: ConsoleKit, request: Request, session: Session) -> Response:
    wanted = request.path_params["profile_id"]
    form = await request.form()
    text = str(form.get("identifier") or "")
    operator = f"console:{session.token.name}"

    def run() -> SplitResult:
        ident = parse_split_identifier(text, kit.ctx.settings.identity.rules)
        # On a store handle of its own: the split holds its write transaction while it
        # re-derives, and the shared handle serves the Profile API's reads meanwhile.
        return split_profile(kit.ctx.settings, wanted, ident, operator, log=kit.ctx.log)

    try:
        result = await run_in_threadpool(run)
    except SplitError as exc:
        return kit.render(
            request,
            "people_split.html",
            session,
            status_code=409,
            error=str(exc),
            result=None,
            back=_profile_url(wanted),
        )
    return kit.render(request, "people_split.html", session, error=None, result=result, back=None)


async def _erase(kit: ConsoleKit, request: Request, session: Session) -> Response:
    wanted = request.path_params["profile_id"]
    form = await request.form()
    kind = _PRIVACY_ACTIONS.get(str(form.get("type") or ""))
    found = await run_in_threadpool(kit.ctx.profiles.get, wanted)
    if kind is None or found is None or not found.identities:
        return kit.render(
            request,
            "people.html",
            session,
            status_code=404 if found is None else 400,
            query="",
            error="ask to delete or suppress a profile that exists and has an identifier",
            asked=None,
        )
    subject = _subject(kit, found)

    def create() -> PrivacyRequest:
        return kit.ctx.privacy.create(kind, subject, requested_by=f"console:{session.token.name}")

    try:
        created = await run_in_threadpool(create)
    except InvalidRequestError as exc:
        return kit.render(
            request,
            "people.html",
            session,
            status_code=400,
            query="",
            error=str(exc),
            asked=None,
        )
    kit.ctx.privacy_wake()
    return RedirectResponse(f"{PEOPLE}?request={quote(created.id)}", status_code=303)


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    return [
        Route(
            PEOPLE,
            kit.page(PROFILES, partial(_search, kit)),
            methods=["GET"],
            name="console_people",
        ),
        Route(
            PEOPLE + "/{profile_id}",
            kit.page(PROFILES, partial(_profile, kit)),
            methods=["GET"],
            name="console_person",
        ),
        Route(
            PEOPLE + "/{profile_id}/split",
            kit.action(ADMIN, partial(_split, kit)),
            methods=["POST"],
            name="console_person_split",
        ),
        Route(
            PEOPLE + "/{profile_id}/privacy",
            kit.action(PRIVACY, partial(_erase, kit)),
            methods=["POST"],
            name="console_person_privacy",
        ),
    ]
