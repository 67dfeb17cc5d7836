"""Signing in to the console with an access token, and signing out."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from clew.console._kit import BASE, ConsoleKit, first_section, safe_next
from clew.console._session import csrf_valid, same_origin


def routes(kit: ConsoleKit) -> list[BaseRoute]:
    async def login_form(request: Request) -> Response:
        return kit.render(
            request,
            "login.html",
            None,
            next=safe_next(request.query_params.get("next")),
            failure=None,
        )

    async def login(request: Request) -> Response:
        form = await request.form()
        target = safe_next(str(form.get("next") or ""))
        if not same_origin(request):
            return kit.render(request, "login.html", None, 403, next=target, failure="origin")
        sent = str(form.get("token") or "").strip()
        found = kit.ctx.catalog.token_for(sent) if sent else None
        if found is None or found.expired(time.time()):
            failure = "expired" if found is not None else "invalid"
            return kit.render(request, "login.html", None, 401, next=target, failure=failure)
        if target == BASE:
            target = first_section(found.scopes)
        response = RedirectResponse(target, status_code=303)
        kit.sessions.set_cookie(response, request, kit.sessions.cookie_for(found))
        return response

    async def logout(request: Request) -> Response:
        session = kit.sessions.read(request)
        form = await request.form()
        genuine = same_origin(request)
        if session is not None and not (genuine and csrf_valid(session, form.get("csrf"))):
            return kit.render(request, "forbidden.html", session, 403, scope=None)
        response = RedirectResponse(f"{BASE}/login", status_code=303)
        kit.sessions.clear_cookie(response)
        return response

    return [
        Route(f"{BASE}/login", login_form, methods=["GET"], name="console_login_form"),
        Route(f"{BASE}/login", login, methods=["POST"], name="console_login"),
        Route(f"{BASE}/logout", logout, methods=["POST"], name="console_logout"),
    ]
