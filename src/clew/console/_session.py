"""Console sessions: an access token exchanged, at the login form, for a signed cookie.

The cookie names the token and when it was created, never the token itself, and is signed with
a key kept in the data directory (``console.key``, created on first use, owner-only). Every
request checks the token again: a revoked, expired or re-created token ends its sessions at
once. The cookie is ``HttpOnly`` and ``SameSite=Strict`` (``Secure`` over https).

Forms carry a CSRF token derived from the session (HMAC of the cookie), and every POST must
come from the console's own origin when the browser says where it comes from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from clew.sources import Catalog, Token

COOKIE = "clew_console"
SESSION_S = 12 * 3600
"""How long a login lasts (the token's own expiry ends it sooner)."""
_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in visitor: the token's record and the CSRF token its forms carry."""

    token: Token
    csrf: str

    def allows(self, scope: str) -> bool:
        return scope in self.token.scopes


def _load_key(path: Path) -> bytes:
    """The signing key at ``path``, created (owner-only, exclusively) when missing, so that
    every process serving the data directory signs alike."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) >= _KEY_BYTES:
            return key
        # A key file cut short by a crash while it was written: replace it.
        path.unlink(missing_ok=True)
        return _load_key(path)
    try:
        key = secrets.token_bytes(_KEY_BYTES)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies for one catalog."""

    def __init__(self, key_path: Path, catalog: Catalog) -> None:
        self._key = _load_key(key_path)
        self._catalog = catalog

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def cookie_for(self, token: Token, now: float | None = None) -> str:
        """The cookie value of a new session of ``token``."""
        now = time.time() if now is None else now
        until = now + SESSION_S
        if token.expires_at is not None:
            until = min(until, token.expires_at)
        payload = _b64(f"{token.name}\n{token.created_at!r}\n{int(until)}".encode())
        return f"{payload}.{self._sign(payload)}"

    def read(self, request: Request) -> Session | None:
        """The session of ``request``'s cookie, ``None`` when it has none that is still valid."""
        value = request.cookies.get(COOKIE, "")
        payload, _, signature = value.rpartition(".")
        if not payload or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            name, created, until = _unb64(payload).decode().split("\n")
            created_at, expires = float(created), int(until)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        now = time.time()
        if now >= expires:
            return None
        token = self._catalog.token_named(name)
        if token is None or token.created_at != created_at or token.expired(now):
            return None
        csrf = _b64(hmac.new(self._key, b"csrf:" + value.encode(), hashlib.sha256).digest())
        return Session(token, csrf)

    @staticmethod
    def set_cookie(response: Response, request: Request, value: str) -> None:
        response.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_S,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(response: Response) -> None:
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the console's own origin: its ``Origin``
    (or, without one, ``Referer``) names this host. A request naming neither (a client that is
    not a browser) is let through: the CSRF token still guards it."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent or sent == "null":
        return not sent
    host = request.headers.get("host", "")
    scheme_end = sent.find("://")
    if scheme_end < 0:
        return False
    rest = sent[scheme_end + 3 :]
    return rest.split("/", 1)[0] == host


def csrf_valid(session: Session, sent: object) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent, session.csrf)
