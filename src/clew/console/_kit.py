"""What every console page module builds on: the templates, the navigation, and the guards
that turn a handler into a page (sign-in and scope checked) or an action (plus CSRF).

A page module exposes ``routes(kit) -> list[BaseRoute]``; its handlers take
``(request, session)`` and return a response, usually ``kit.render(...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from clew.console._context import ConsoleContext
from clew.console._session import Session, Sessions, csrf_valid, same_origin
from clew.sources import ADMIN, METRICS, PRIVACY, PROFILES

PageHandler = Callable[[Request, Session], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]

BASE = "/console"


@dataclass(frozen=True, slots=True)
class NavItem:
    title: str
    path: str
    scope: str


NAV: tuple[NavItem, ...] = (
    NavItem("Overview", BASE, METRICS),
    NavItem("Live", f"{BASE}/live", ADMIN),
    NavItem("People", f"{BASE}/people", PROFILES),
    NavItem("Audiences", f"{BASE}/audiences", PROFILES),
    NavItem("Data quality", f"{BASE}/quality", ADMIN),
    NavItem("Destinations", f"{BASE}/destinations", ADMIN),
    NavItem("Privacy", f"{BASE}/privacy", PRIVACY),
)
"""The console's sections, each shown to a session whose token holds its scope."""

# No inline script or style anywhere: pages load the console's own files only.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("clew.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["BASE"] = BASE
    return env


class ConsoleKit:
    """Shared by the page modules: the context (stores), sessions and templates."""

    def __init__(self, ctx: ConsoleContext, sessions: Sessions) -> None:
        self.ctx = ctx
        self.sessions = sessions
        self.env = _environment()

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status_code: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        """``template`` rendered with ``values``, the navigation the session may see and its
        CSRF token (``csrf``), with the console's security headers."""
        nav = [n for n in NAV if session is not None and session.allows(n.scope)]
        html = self.env.get_template(template).render(
            request=request,
            session=session,
            nav=nav,
            path=request.url.path,
            csrf=session.csrf if session is not None else "",
            **values,
        )
        return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)

    def refuse(self, request: Request, session: Session, scope: str) -> HTMLResponse:
        return self.render(request, "forbidden.html", session, status_code=403, scope=scope)

    def admit(self, request: Request, scope: str) -> Session | Response:
        """The request's session when its token holds ``scope``; else what to answer: the
        login form for a visitor without a session, a 403 page naming ``scope`` otherwise."""
        session = self.sessions.read(request)
        if session is None:
            return to_login(request)
        if not session.allows(scope):
            return self.refuse(request, session, scope)
        return session

    def page(self, scope: str, handler: PageHandler) -> Endpoint:
        """A GET endpoint: a visitor without a session is sent to the login form (and back
        here after it); one whose token lacks ``scope`` gets a 403 page naming it."""

        async def endpoint(request: Request) -> Response:
            admitted = self.admit(request, scope)
            if isinstance(admitted, Response):
                return admitted
            return await handler(request, admitted)

        return endpoint

    def action(self, scope: str, handler: PageHandler) -> Endpoint:
        """A POST endpoint: as :meth:`page`, and the form must carry the session's CSRF token
        (field ``csrf``) and come from the console's own origin (403 otherwise)."""

        async def endpoint(request: Request) -> Response:
            admitted = self.admit(request, scope)
            if isinstance(admitted, Response):
                return admitted
            form = await request.form()
            if not same_origin(request) or not csrf_valid(admitted, form.get("csrf")):
                return self.render(request, "forbidden.html", admitted, status_code=403, scope=None)
            return await handler(request, admitted)

        return endpoint


def first_section(scopes: frozenset[str]) -> str:
    """The first section a token holding ``scopes`` may see (the overview when it may)."""
    return next((n.path for n in NAV if n.scope in scopes), BASE)


def to_login(request: Request) -> RedirectResponse:
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{BASE}/login?next={quote(back, safe='')}", status_code=303)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path inside the console, never another site."""
    if target is None or not target.startswith(BASE) or "\\" in target or "://" in target:
        return BASE
    return target
